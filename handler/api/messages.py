"""`POST /v1/messages`: Anthropic's Messages API, as llama-server and vLLM serve it, over the same model,
cache and limits as `/v1/chat/completions`.

`system` and the messages become the chat messages `/v1/chat/completions` would get (`tool_use` and
`tool_result` blocks as an assistant's tool calls and tool messages), the tools the same tool plan, and
the sampling the same parameters would give there, so the same conversation is the same cache key on
both routes.
Errors on this route are in Anthropic's shape (`handler.middleware.error_responses`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from handler.api.common import log_answer, remaining_ms
from handler.api.conversation import AnswerReader, conversation, field_names
from handler.api.deps import ChatServiceDep
from handler.api.event_stream import event_stream_response, named_event
from handler.api.messages_schemas import (
    MessagesRequest,
    MessagesResponse,
    MessagesUsage,
    StopReason,
    TextOut,
    ToolUseOut,
)
from handler.api.openai import openai_finish_reason, request_params
from handler.api.openai_schemas import OpenAIRequest
from handler.cache.policy import cache_policy
from handler.core.errors import BadRequest, ServiceError
from handler.core.types import ChatMessage, Completion, SamplingParams, ToolCall
from handler.service.chat_service import ChatService
from handler.service.tool_calls import ParsedAnswer, argument_pieces

router = APIRouter(prefix="/v1", tags=["Anthropic Messages"])


# Chat's names of the tools' fields, and this route's, for the errors the tool planner names them in.
TOOL_FIELDS = ((".function.name", ".name"), (".function.parameters", ".input_schema"))


def anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/json": {"example": {**anthropic_error(kind, "..."), "request_id": "..."}}},
    }
    for status, kind, description in (
        (400, "invalid_request_error", "Invalid or unsupported parameters; the message names the field."),
        (401, "authentication_error", "API keys are configured and none valid was sent (`x-api-key`)."),
        (404, "not_found_error", "`model` is not a model this service serves (GET /v1/models)."),
        (429, "rate_limit_error", "Too many distinct generations pending; see Retry-After."),
        (503, "api_error", "The model cannot be loaded right now."),
    )
}


def chat_messages(body: MessagesRequest) -> list[ChatMessage]:
    """`system` as a system message, then the messages as `/v1/chat/completions` takes them: an assistant's
    `tool_use` blocks as its tool calls, a user's `tool_result` blocks as tool messages."""
    system = body.system_text()
    messages = [ChatMessage("system", system)] if system else []
    for index, message in enumerate(body.messages):
        calls = {call.id for call in messages[-1].tool_calls} if messages else set()
        for turn in message.chat_messages(index):
            if turn.role == "tool" and turn.tool_call_id not in calls:
                raise BadRequest(
                    f"messages.{index}: a `tool_result` answers a `tool_use` (by its `tool_use_id`) of the "
                    "assistant message before it.",
                    param="messages",
                )
            messages.append(turn)
    if messages[-1].role not in ("user", "tool"):
        raise BadRequest("`messages` must end with a user message (an assistant prefill is not supported).")
    return messages


async def sampling(service: ChatService, body: MessagesRequest, tools_grammar: str | None) -> SamplingParams:
    """`request_params` of the chat request with the same sampling; the stop sequences as chat's `stop`."""
    fields = ("temperature", "top_p", "top_k")
    equivalent = OpenAIRequest.model_validate(
        {"model": body.model, **{name: getattr(body, name) for name in fields if getattr(body, name) is not None}}
    )
    params = await request_params(service, equivalent, body.max_tokens)
    stops = tuple(dict.fromkeys(body.stop_sequences or ()))
    return dataclasses.replace(params, stop=stops, grammar=tools_grammar or params.grammar)


def stop_reason(completion: Completion, stops: list[str] | None, calls: tuple[ToolCall, ...] = ()) -> StopReason:
    """`tool_use` for a whole answer that calls tools; `max_tokens` for any answer cut short (by the deadline
    too: `X-Finish-Reason` says which); `stop_sequence` for one ended by one of the request's
    `stop_sequences` (not by a stop of the model's template)."""
    if openai_finish_reason(completion) != "stop":
        return "max_tokens"
    if calls:
        return "tool_use"
    return "stop_sequence" if stop_sequence(completion, stops) is not None else "end_turn"


def stop_sequence(completion: Completion, stops: list[str] | None) -> str | None:
    return completion.stop if completion.stop is not None and completion.stop in (stops or ()) else None


def tool_use(call: ToolCall) -> ToolUseOut:
    """A call as a `tool_use` block; arguments that are not a JSON object (never, where the grammar holds
    them) are an empty input, as llama-server gives them."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = None
    return ToolUseOut(id=call.id, name=call.name, input=arguments if isinstance(arguments, dict) else {})


def whole_message(
    message_id: str, model: str, completion: Completion, answer: ParsedAnswer, stops: list[str] | None
) -> MessagesResponse:
    """The content: the answer's text as a text block (unless it only calls tools), then its calls."""
    content: list[TextOut | ToolUseOut] = []
    if answer.content or not answer.calls:
        content.append(TextOut(text=answer.content or ""))
    content.extend(tool_use(call) for call in answer.calls)
    return MessagesResponse(
        id=message_id,
        content=content,
        model=model,
        stop_reason=stop_reason(completion, stops, answer.calls),
        stop_sequence=stop_sequence(completion, stops),
        usage=MessagesUsage(input_tokens=completion.prompt_tokens, output_tokens=completion.completion_tokens),
    )


# Anthropic's error types by status, for an error after the stream's 200 went out.
STREAM_ERROR_TYPES = {400: "invalid_request_error", 429: "rate_limit_error"}


class MessageEvents:
    """Anthropic's event stream: message_start; a text block opened at the answer's first text, its text
    deltas, closed; then a tool_use block per call, its input in input_json_delta pieces, closed; then
    message_delta (stop reason and usage) and message_stop."""

    def __init__(self, message_id: str, model: str, reader: AnswerReader, stops: list[str] | None) -> None:
        self.message_id, self.model, self.reader, self.stops = message_id, model, reader, stops
        self.opened = False  # the text block, index 0

    @staticmethod
    def _event(kind: str, **fields: Any) -> str:
        return named_event(kind, {"type": kind, **fields})

    def opening(self) -> list[str]:
        # The prompt's tokens are counted as the generation ends: message_delta carries them.
        message = MessagesResponse(
            id=self.message_id,
            content=[],
            model=self.model,
            stop_reason=None,
            usage=MessagesUsage(input_tokens=0, output_tokens=0),
        )
        return [self._event("message_start", message=message.model_dump())]

    def _text(self, text: str) -> list[str]:
        if not text:
            return []
        events = [] if self.opened else self._open_text()
        return [*events, self._event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})]

    def _open_text(self) -> list[str]:
        self.opened = True
        return [self._event("content_block_start", index=0, content_block=TextOut(text="").model_dump())]

    def piece(self, text: str) -> list[str]:
        return self._text(self.reader.feed(text))

    def closing(self, completion: Completion) -> list[str]:
        rest, calls = self.reader.finish(completion.text)
        events = self._text(rest)
        if not self.opened and not calls:  # an empty answer is still a text block
            events += self._open_text()
        if self.opened:
            events.append(self._event("content_block_stop", index=0))
        for index, call in enumerate(calls, start=1 if self.opened else 0):
            block = tool_use(call)
            start = {**block.model_dump(), "input": {}}
            events.append(self._event("content_block_start", index=index, content_block=start))
            for piece in argument_pieces(json.dumps(block.input, ensure_ascii=False)):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(self._event("content_block_delta", index=index, delta=delta))
            events.append(self._event("content_block_stop", index=index))
        usage = MessagesUsage(input_tokens=completion.prompt_tokens, output_tokens=completion.completion_tokens)
        return [
            *events,
            self._event(
                "message_delta",
                delta={
                    "stop_reason": stop_reason(completion, self.stops, calls),
                    "stop_sequence": stop_sequence(completion, self.stops),
                },
                usage=usage.model_dump(),
            ),
            self._event("message_stop"),
        ]

    def failure(self, error: ServiceError) -> list[str]:
        kind = STREAM_ERROR_TYPES.get(error.status_code, "api_error")
        return [named_event("error", anthropic_error(kind, error.public_message))]


@router.post("/messages", response_model=MessagesResponse, responses=ERRORS)
async def create_message(
    body: MessagesRequest, request: Request, response: Response, service: ChatServiceDep
) -> MessagesResponse | StreamingResponse:
    """One assistant turn: `system` and the messages through the model's chat template, the answer as
    one text block. Takes the `x-api-key` and `anthropic-version` headers (any version)."""
    body.unsupported()
    lora = service.served.lora_for(body.model, body.lora_scale)
    messages = chat_messages(body)
    with field_names(TOOL_FIELDS):
        talk = await conversation(service, messages, body.tool_request())
    params = await sampling(service, body, talk.grammar)
    policy = cache_policy(request.headers.get("cache-control"), body.cache)
    deadline = service.deadline(remaining_ms(request))
    message_id = f"msg_{request.state.request_id}"
    if body.stream:
        stream = await service.stream(talk.prompt, params, policy, deadline, lora)
        events = MessageEvents(message_id, body.model, talk.reader(message_id), body.stop_sequences)
        return event_stream_response(request, stream, events, messages[-1].content)
    answer = await service.answer(talk.prompt, params, policy, deadline, lora)
    response.headers["X-Cache"] = answer.source
    response.headers["X-Finish-Reason"] = answer.completion.finish_reason
    log_answer(request, answer.source, answer.completion, messages[-1].content, shared=answer.shared)
    answered = talk.read(answer.completion.text, message_id)
    return whole_message(message_id, body.model, answer.completion, answered, body.stop_sequences)
