"""`POST /v1/responses`: OpenAI's Responses API, stateless, over the same model, cache and limits as
`/v1/chat/completions`.

The input becomes the chat messages `/v1/chat/completions` would get (function calls and their outputs
as an assistant's tool calls and tool messages), the tools the same tool plan, and the sampling the
same parameters would give there, so the same conversation is the same cache key on both routes.
Nothing is stored: `previous_response_id` is a 400 that says to send the earlier turns in `input`, and
`GET /v1/responses/{id}` is a 404 that says why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from handler.api.common import log_answer, remaining_ms
from handler.api.conversation import AnswerReader, conversation, field_names
from handler.api.deps import ChatServiceDep
from handler.api.event_stream import event_stream_response, named_event
from handler.api.openai import ERRORS, openai_finish_reason, request_params
from handler.api.openai_schemas import OpenAIRequest
from handler.api.responses_schemas import (
    FunctionCall,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from handler.api.schemas import ErrorResponse
from handler.cache.policy import cache_policy
from handler.core.errors import BadRequest, NotFound, ServiceError
from handler.core.types import ChatMessage, Completion, SamplingParams, ToolCall
from handler.service.chat_service import ChatService
from handler.service.tool_calls import ParsedAnswer, argument_pieces

router = APIRouter(prefix="/v1", tags=["OpenAI Responses"])

# Chat's names of the tools' fields, and this route's, for the errors the tool planner names them in.
TOOL_FIELDS = ((".function.name", ".name"), (".function.parameters", ".parameters"))
NOT_STORED = (
    "This service is stateless: it stores no responses (`store` is accepted and ignored), so none can be "
    "retrieved or deleted. Send the earlier turns in `input` instead."
)


def chat_messages(body: ResponsesRequest) -> list[ChatMessage]:
    """`instructions` as a system message, then the input's items as `/v1/chat/completions` takes them: a
    `function_call` joins the assistant message before it (or makes one), a `function_call_output` is a
    tool message."""
    messages = [ChatMessage("system", body.instructions)] if body.instructions else []
    open_calls: set[str] = set()  # the calls of the turn before, which outputs answer
    for index, item in enumerate(body.items()):
        if isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            if messages and messages[-1].role == "assistant":
                messages[-1] = dataclasses.replace(messages[-1], tool_calls=(*messages[-1].tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", "", (call,)))
            open_calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in open_calls:
                raise BadRequest(
                    f"input.{index}: a `function_call_output` answers a `function_call` (by its `call_id`) of "
                    "the turn before it; send that `function_call` item first.",
                    param=f"input.{index}.call_id",
                )
            messages.append(ChatMessage("tool", item.text(), tool_call_id=item.call_id))
        else:
            messages.append(item.chat_message())
            open_calls = set()
    if not messages or messages[-1].role not in ("user", "tool"):
        raise BadRequest("`input` must end with a user message or a `function_call_output`.", param="input")
    return messages


def chat_equivalent(body: ResponsesRequest) -> OpenAIRequest:
    """The chat request with the same sampling, so that `request_params` makes it, as for chat."""
    structured, schema = body.structured_schema()
    response_format: dict[str, Any] | None = None
    if structured:
        response_format = (
            {"type": "json_object"}
            if schema is None
            else {"type": "json_schema", "json_schema": {"name": "text_format", "schema": schema}}
        )
    fields = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
    return OpenAIRequest.model_validate(
        {
            "model": body.model,
            "response_format": response_format,
            **{name: getattr(body, name) for name in fields if getattr(body, name) is not None},
        }
    )


async def sampling(service: ChatService, body: ResponsesRequest, tools_grammar: str | None) -> SamplingParams:
    limit = service.settings.max_tokens_limit
    if body.max_output_tokens is not None and body.max_output_tokens > limit:
        raise BadRequest(
            f"max_output_tokens is {body.max_output_tokens}, above this service's limit of {limit}.",
            param="max_output_tokens",
        )
    try:
        params = await request_params(service, chat_equivalent(body), body.max_output_tokens)
    except BadRequest as exc:  # the grammar's error names chat's field
        if exc.param == "response_format":
            message = exc.public_message.replace("response_format", "text.format")
            raise BadRequest(message, param="text.format") from None
        raise
    return params if tools_grammar is None else dataclasses.replace(params, grammar=tools_grammar)


def function_call(call: ToolCall, status: Any = "completed", arguments: str | None = None) -> FunctionCall:
    return FunctionCall(
        id="fc_" + call.id.removeprefix("call_"),
        status=status,
        call_id=call.id,
        name=call.name,
        arguments=call.arguments if arguments is None else arguments,
    )


class ResponseBuilder:
    """The response object of one request, in progress, whole, or failed; and its output's ids."""

    def __init__(self, request: Request, body: ResponsesRequest) -> None:
        rid = request.state.request_id
        self.id, self.message_id = f"resp_{rid}", f"msg_{rid}"
        self.created_at = int(time.time())
        self.body = body
        fmt = body.text.format if body.text is not None else None
        self.text = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}

    def response(self, status: Any, output: list[OutputItem], **fields: Any) -> ResponseObject:
        body = self.body
        choice = body.tool_choice
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=body.model,
            output=output,
            parallel_tool_calls=bool(body.parallel_tool_calls),
            temperature=body.temperature,
            top_p=body.top_p,
            text=self.text,
            tool_choice=choice.model_dump() if choice is not None and not isinstance(choice, str) else choice or "auto",
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()],
            user=body.user,
            metadata=body.metadata or {},
            **fields,
        )

    def message(self, text: str, done: bool) -> OutputMessage:
        return OutputMessage(
            id=self.message_id, status="completed" if done else "incomplete", content=[OutputText(text=text)]
        )

    def whole(self, completion: Completion, answer: ParsedAnswer) -> ResponseObject:
        """The output: the answer's text as a message (unless it only calls tools), then its calls."""
        done = openai_finish_reason(completion) == "stop"
        output: list[OutputItem] = []
        if answer.content or not answer.calls:
            output.append(self.message(answer.content or "", done))
        output.extend(function_call(call) for call in answer.calls)
        return self.response(
            "completed" if done else "incomplete",
            output,
            incomplete_details=None if done else IncompleteDetails(reason="max_output_tokens"),
            usage=ResponseUsage(
                input_tokens=completion.prompt_tokens,
                output_tokens=completion.completion_tokens,
                total_tokens=completion.prompt_tokens + completion.completion_tokens,
            ),
        )


class ResponseEvents:
    """The Responses event stream: created, in progress; the message item and its text part added at the
    answer's first text, text deltas, each done; then each function call added, its arguments in deltas,
    done; and the response completed (or incomplete)."""

    def __init__(self, builder: ResponseBuilder, reader: AnswerReader, read: Callable[[str], ParsedAnswer]) -> None:
        self.builder, self.reader, self.read = builder, reader, read
        self.sequence = 0
        self.opened = False  # the message item
        self.text = ""
        self.part = {"item_id": builder.message_id, "output_index": 0, "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return named_event(kind, data)

    def opening(self) -> list[str]:
        started = self.builder.response("in_progress", []).model_dump()
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
        ]

    def _open_message(self) -> list[str]:
        self.opened = True
        message = OutputMessage(id=self.builder.message_id, status="in_progress", content=[])
        return [
            self._event("response.output_item.added", output_index=0, item=message.model_dump()),
            self._event("response.content_part.added", **self.part, part=OutputText(text="").model_dump()),
        ]

    def _text(self, text: str) -> list[str]:
        if not text:
            return []
        events = [] if self.opened else self._open_message()
        self.text += text
        return [*events, self._event("response.output_text.delta", **self.part, delta=text, logprobs=[])]

    def piece(self, text: str) -> list[str]:
        return self._text(self.reader.feed(text))

    def closing(self, completion: Completion) -> list[str]:
        rest, calls = self.reader.finish(completion.text)
        events = self._text(rest)
        whole = self.builder.whole(completion, self.read(completion.text))
        if not self.opened and not calls:  # an empty answer is still a message
            events += self._open_message()
        if self.opened:
            message = whole.output[0]
            assert isinstance(message, OutputMessage)
            part = message.content[0]
            events += [
                self._event("response.output_text.done", **self.part, text=part.text, logprobs=[]),
                self._event("response.content_part.done", **self.part, part=part.model_dump()),
                self._event("response.output_item.done", output_index=0, item=message.model_dump()),
            ]
        for index, call in enumerate(calls, start=1 if self.opened else 0):
            item = function_call(call, "in_progress", "")
            at = {"item_id": item.id, "output_index": index}
            events.append(self._event("response.output_item.added", output_index=index, item=item.model_dump()))
            for piece in argument_pieces(call.arguments):
                events.append(self._event("response.function_call_arguments.delta", **at, delta=piece))
            events.append(self._event("response.function_call_arguments.done", **at, arguments=call.arguments))
            done = function_call(call).model_dump()
            events.append(self._event("response.output_item.done", output_index=index, item=done))
        return [*events, self._event(f"response.{whole.status}", response=whole.model_dump())]

    def failure(self, error: ServiceError) -> list[str]:
        failed = self.builder.response(
            "failed", [], error=ResponseError(code="server_error", message=error.public_message)
        )
        return [self._event("response.failed", response=failed.model_dump())]


@router.post("/responses", response_model=ResponseObject, responses=ERRORS)
async def create_response(
    body: ResponsesRequest, request: Request, response: Response, service: ChatServiceDep
) -> ResponseObject | StreamingResponse:
    """One model turn: the input as chat messages through the model's chat template, the answer as an
    output message and any function calls. Stateless: nothing is stored, whatever `store` says."""
    body.unsupported()
    lora = service.served.lora_for(body.model, body.lora_scale)
    messages = chat_messages(body)
    with field_names(TOOL_FIELDS):
        talk = await conversation(service, messages, body.tool_request())
    params = await sampling(service, body, talk.grammar)
    policy = cache_policy(request.headers.get("cache-control"), body.cache)
    deadline = service.deadline(remaining_ms(request))
    builder = ResponseBuilder(request, body)

    def read(text: str) -> ParsedAnswer:
        return talk.read(text, builder.id)

    if body.stream:
        stream = await service.stream(talk.prompt, params, policy, deadline, lora)
        events = ResponseEvents(builder, talk.reader(builder.id), read)
        return event_stream_response(request, stream, events, messages[-1].content)
    answer = await service.answer(talk.prompt, params, policy, deadline, lora)
    response.headers["X-Cache"] = answer.source
    response.headers["X-Finish-Reason"] = answer.completion.finish_reason
    log_answer(request, answer.source, answer.completion, messages[-1].content, shared=answer.shared)
    return builder.whole(answer.completion, read(answer.completion.text))


NOT_STORED_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Always: nothing is stored."}
}


# One route per method: with both on one route, the schema's order of them follows a set's, which varies
# from process to process.
@router.get("/responses/{response_id:path}", responses=NOT_STORED_RESPONSES)
async def stored_response(response_id: str) -> None:
    """Always a 404: this service is stateless and stores no responses."""
    raise NotFound(NOT_STORED, param="response_id")


@router.delete("/responses/{response_id:path}", responses=NOT_STORED_RESPONSES)
async def delete_stored_response(response_id: str) -> None:
    """Always a 404: nothing is stored to delete."""
    raise NotFound(NOT_STORED, param="response_id")
