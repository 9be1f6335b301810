"""`POST /chat`: the service's own minimal API."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from handler.api.common import log_answer, remaining_ms
from handler.api.deps import ChatServiceDep
from handler.api.schemas import ChatRequest, ChatResponse, ErrorResponse
from handler.cache.policy import cache_policy
from handler.service.prompts import chat_input

router = APIRouter()


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        200: {
            "headers": {
                "X-Cache": {"description": "HIT-MEMORY, HIT-DISK, HIT-SHARED or MISS", "schema": {"type": "string"}},
                "X-Finish-Reason": {
                    "description": "stop, length (max_tokens reached) or time_limit (the generation deadline)",
                    "schema": {"type": "string"},
                },
            }
        },
        400: {"model": ErrorResponse, "description": "The request cannot be answered as asked."},
        404: {"model": ErrorResponse, "description": "`model` is not a model this service serves."},
        401: {"model": ErrorResponse, "description": "API keys are configured and none valid was sent."},
        413: {"model": ErrorResponse, "description": "The body is over max_body_bytes."},
        429: {"model": ErrorResponse, "description": "Too many distinct generations pending; see Retry-After."},
        422: {"description": "The body does not match the schema; each field's problem is listed."},
        500: {"model": ErrorResponse, "description": "Generation failed."},
        503: {"model": ErrorResponse, "description": "The model cannot be loaded right now."},
    },
)
async def chat(body: ChatRequest, request: Request, response: Response, service: ChatServiceDep) -> ChatResponse:
    lora = service.served.lora_for(body.model)
    service.check_prompt(body.prompt)
    params = service.params_for(body.max_tokens)
    policy = cache_policy(request.headers.get("cache-control"), body.cache)
    deadline = service.deadline(remaining_ms(request))
    answer = await service.answer(chat_input(service.settings, body.prompt), params, policy, deadline, lora)
    response.headers["X-Cache"] = answer.source
    response.headers["X-Finish-Reason"] = answer.completion.finish_reason
    log_answer(request, answer.source, answer.completion, body.prompt, shared=answer.shared)
    return ChatResponse(text=answer.completion.text.strip())
