"""What routes get from the app, as FastAPI dependencies, so tests can swap them without patching.

They are `async` on purpose: FastAPI runs a plain `def` dependency on a worker thread, a hop that
costs more than a whole memory hit.
"""

from __future__ import annotations

from fastapi import Request

from handler.chat_service import ChatService


async def get_chat_service(request: Request) -> ChatService:
    return request.app.state.chat
