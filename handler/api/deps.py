"""What routes get from the app, as FastAPI dependencies, so tests can swap them without patching.

They are `async` on purpose: FastAPI runs a plain `def` dependency on a worker thread, a hop that
costs more than a whole memory hit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from handler.service.chat_service import ChatService
from handler.service.served_models import ServedModels


async def get_chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]


async def get_served_models(request: Request) -> ServedModels:
    served: ServedModels = request.app.state.served
    return served


ServedModelsDep = Annotated[ServedModels, Depends(get_served_models)]


async def get_authenticated(request: Request) -> bool:
    """Whether the request may see everything: API keys are off, or it carries a valid one (as the API-key
    middleware notes it in the scope's state, `authenticated`; absent, as without the middleware, is no)."""
    return getattr(request.state, "authenticated", False) is True


AuthenticatedDep = Annotated[bool, Depends(get_authenticated)]
