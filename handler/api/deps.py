"""What routes get from the app, as FastAPI dependencies, so tests can swap them without patching.

They are `async` on purpose: FastAPI runs a plain `def` dependency on a worker thread, a hop that
costs more than a whole memory hit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from handler.service.chat_service import ChatService


async def get_chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
