"""`POST /chat`: the service's own minimal API."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from handler.chat_service import ChatService
from handler.dependencies import get_chat_service
from handler.schemas import ChatRequest, ChatResponse, ErrorResponse

router = APIRouter()


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        400: {"model": ErrorResponse, "description": "The request cannot be answered as asked."},
        422: {"description": "The body does not match the schema; each field's problem is listed."},
        500: {"model": ErrorResponse, "description": "Generation failed."},
        503: {"model": ErrorResponse, "description": "The model cannot be loaded right now."},
    },
)
async def chat(body: ChatRequest, service: ChatService = Depends(get_chat_service)) -> ChatResponse:
    completion = await service.answer(body.prompt, body.max_tokens)
    return ChatResponse(text=completion.text)
