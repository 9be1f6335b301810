"""The OpenAI-compatible API: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

Same model, same cache and same limits as `/chat`; requests and answers in OpenAI's shapes, so the
OpenAI client (and whatever is built on it) works unchanged against this service.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from handler.api.common import log_answer, remaining_ms
from handler.api.conversation import conversation
from handler.api.deps import ChatServiceDep, ServedModelsDep
from handler.api.openai_answers import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    ModelCard,
    ModelList,
    ToolCallOut,
    Usage,
)
from handler.api.openai_schemas import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from handler.api.schemas import ErrorResponse
from handler.api.sse import ChunkBuilder, events, sse_response
from handler.cache.policy import cache_policy
from handler.core.types import Completion, FinishReason, Lora, Prompt, SamplingParams, ToolCall
from handler.engine.grammar import json_grammar
from handler.service.answer_stream import overall
from handler.service.chat_service import ChatService
from handler.service.prompts import completion_input
from handler.service.tool_calls import ParsedAnswer, ToolStream, argument_pieces

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid or unsupported parameters; `param` names the field."},
    401: {"model": ErrorResponse, "description": "API keys are configured and none valid was sent."},
    404: {"model": ErrorResponse, "description": "`model` is not a model this service serves (GET /v1/models)."},
    429: {"model": ErrorResponse, "description": "Too many distinct generations pending; see Retry-After."},
    503: {"model": ErrorResponse, "description": "The model cannot be loaded right now."},
}
STARTED = int(time.time())
R = TypeVar("R")


@router.get("/models", response_model=ModelList)
async def list_models(served: ServedModelsDep) -> ModelList:
    """The model, then `<model>:<adapter>` for each configured LoRA adapter."""
    return ModelList(data=[ModelCard(id=model, created=STARTED) for model in served.ids()])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: ERRORS[404]})
async def get_model(model_id: str, served: ServedModelsDep) -> ModelCard:
    served.lora_for(model_id)
    return ModelCard(id=model_id, created=STARTED)


async def request_params(service: ChatService, body: OpenAIRequest, max_tokens: int | None) -> SamplingParams:
    """The request's own values over the service's defaults; its stop strings replace config's. Raises
    BadRequest for a parameter it cannot honour (`n` beyond the service's limits too)."""
    body.unsupported()
    service.check_choices(body.choices())
    params = service.params_for(max_tokens, param=body.max_tokens_param())
    logprobs = body.logprobs_asked()
    structured, schema = body.structured_schema()
    # The converter imports llama_cpp (once, on a thread: it loads the library); plain requests never do.
    grammar = await run_in_threadpool(json_grammar, schema) if structured else None
    overrides = {
        name: getattr(body, name)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "seed",
            "frequency_penalty",
            "presence_penalty",
        )
    }
    return dataclasses.replace(
        params,
        stop=tuple(body.stop or ()),
        grammar=grammar,
        logit_bias=body.bias(),
        logprobs=logprobs,
        **{name: value for name, value in overrides.items() if value is not None},
    )


def openai_finish_reason(completion: Completion) -> str:
    """OpenAI knows `stop` and `length`; any answer cut short (by the deadline, say) is `length` (truncated),
    and the `X-Finish-Reason` header says why (`time_limit`)."""
    return "stop" if completion.finish_reason == FinishReason.STOP else "length"


def token_text(token: bytes) -> str:
    """A token's text; part of a UTF-8 character is spelled as OpenAI spells it (its `bytes` are exact)."""
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in token)


def chat_logprobs(completion: Completion) -> ChatLogprobs | None:
    if completion.logprobs is None:
        return None
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=token_text(entry.token),
                logprob=entry.logprob,
                bytes=list(entry.token),
                top_logprobs=[
                    ChatTopLogprob(token=token_text(token), logprob=logprob, bytes=list(token))
                    for token, logprob in entry.top
                ],
            )
            for entry in completion.logprobs
        ]
    )


def completion_logprobs(completion: Completion, prompt: str) -> CompletionLogprobs | None:
    """The legacy shape; offsets count characters from the prompt's start, as OpenAI's (and
    llama-cpp-python's) do when the prompt is not echoed."""
    if completion.logprobs is None:
        return None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")  # as the text is decoded
    offsets = []
    offset = len(prompt)
    for entry in completion.logprobs:
        offsets.append(offset)
        offset += len(decoder.decode(entry.token))
    return CompletionLogprobs(
        tokens=[token_text(entry.token) for entry in completion.logprobs],
        token_logprobs=[entry.logprob for entry in completion.logprobs],
        top_logprobs=[top_dict(entry.top) for entry in completion.logprobs],
        text_offset=offsets,
    )


def top_dict(top: tuple[tuple[bytes, float], ...]) -> dict[str, float]:
    """Most likely first; of tokens that read the same (control tokens, say), the first is kept."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(token_text(token), logprob)
    return out


def usage(choices: tuple[Completion, ...]) -> Usage:
    """The prompt's tokens once (the choices share it), and the tokens of every choice."""
    prompt_tokens = choices[0].prompt_tokens
    completion_tokens = sum(choice.completion_tokens for choice in choices)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def calls_seed(response_id: str, index: int) -> str:
    """What choice `index`'s call ids are made from: ids unique within the response (the first choice's are
    those of an answer of one)."""
    return response_id if index == 0 else f"{response_id}/{index}"


async def respond(
    request: Request,
    response: Response,
    service: ChatService,
    body: OpenAIRequest,
    prompt: Prompt,
    params: SamplingParams,
    logged_prompt: str,
    build: Callable[[tuple[Completion, ...]], R],
    chunk: ChunkBuilder,
    lora: Lora | None,
) -> R | StreamingResponse:
    """Answer whole, or as server-sent events when the request asks to stream; `n` choices of it."""
    policy = cache_policy(request.headers.get("cache-control"), body.cache)
    deadline = service.deadline(remaining_ms(request))
    n = body.choices()
    if not body.stream:
        answer = await service.answer(prompt, params, policy, deadline, lora, n)
        whole = overall(answer.choices)
        response.headers["X-Cache"] = answer.source
        response.headers["X-Finish-Reason"] = whole.finish_reason
        log_answer(request, answer.source, whole, logged_prompt, shared=answer.shared)
        return build(answer.choices)

    stream = await service.stream(prompt, params, policy, deadline, lora, n)
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def usage_chunk(choices: tuple[Completion, ...]) -> dict[str, Any]:
        bare = chunk(0, None, None)
        return {**(bare if isinstance(bare, dict) else bare[0]), "choices": [], "usage": usage(choices).model_dump()}

    def finished(completion: Completion) -> None:
        log_answer(request, stream.source, completion, logged_prompt, stream=True)

    body_events = events(stream, chunk, usage_chunk if include_usage else None, finished)
    return sse_response(body_events, {"X-Cache": stream.source})


def response_id(request: Request, prefix: str) -> str:
    return f"{prefix}-{request.state.request_id}"


@router.post("/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(
    body: CompletionRequest, request: Request, response: Response, service: ChatServiceDep
) -> CompletionResponse | StreamingResponse:
    """A raw completion of `prompt`: no system prompt, no template, only the request's stop strings."""
    assert isinstance(body.prompt, str)  # the validator made it one string
    lora = service.served.lora_for(body.model, body.lora_scale)
    service.check_prompt(body.prompt)
    params = await request_params(service, body, body.max_tokens)
    rid, created, model = response_id(request, "cmpl"), int(time.time()), body.model
    prompt_text = body.prompt

    def build(choices: tuple[Completion, ...]) -> CompletionResponse:
        return CompletionResponse(
            id=rid,
            created=created,
            model=model,
            usage=usage(choices),
            choices=[
                CompletionChoice(
                    index=index,
                    text=completion.text,
                    logprobs=completion_logprobs(completion, prompt_text),
                    finish_reason=openai_finish_reason(completion),
                )
                for index, completion in enumerate(choices)
            ],
        )

    def chunk(index: int, text: str | None, last: Completion | None) -> dict[str, Any]:
        """Text chunks carry no logprobs: each choice's last chunk carries them all."""
        logprobs = None if last is None else completion_logprobs(last, prompt_text)
        choice = {
            "index": index,
            "text": text or "",
            "logprobs": None if logprobs is None else logprobs.model_dump(),
            "finish_reason": None if last is None else openai_finish_reason(last),
        }
        return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}

    prompt = completion_input(service.settings, body.prompt)
    return await respond(request, response, service, body, prompt, params, body.prompt, build, chunk, lora)


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, service: ChatServiceDep
) -> ChatCompletionResponse | StreamingResponse:
    """Messages formatted by the model's own chat template (GGUF metadata), or by the config's
    System/Human/Assistant template when the model has none."""
    lora = service.served.lora_for(body.model, body.lora_scale)
    messages = [m.message() for m in body.messages]
    tools = body.tool_request()
    talk = await conversation(service, messages, tools)
    plan, prompt = talk.plan, talk.prompt
    params = await request_params(service, body, body.max_completion_tokens or body.max_tokens)
    if talk.grammar is not None:
        params = dataclasses.replace(params, grammar=talk.grammar)
    rid, created, model = response_id(request, "chatcmpl"), int(time.time()), body.model

    def chat_choice(index: int, completion: Completion) -> ChatChoice:
        """Each choice's answer read on its own: its text, and its calls where it makes any."""
        text = completion.text
        answer = plan.parse(text, calls_seed(rid, index)) if plan is not None else ParsedAnswer(text)
        return ChatChoice(
            index=index,
            message=AssistantMessage(
                content=answer.content, tool_calls=[ToolCallOut.of(c) for c in answer.calls] or None
            ),
            logprobs=chat_logprobs(completion),
            finish_reason=tool_finish_reason(completion, answer.calls),
        )

    def build(choices: tuple[Completion, ...]) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=model,
            usage=usage(choices),
            choices=[chat_choice(index, completion) for index, completion in enumerate(choices)],
        )

    begun: set[int] = set()  # the choices whose first delta (with the role) has gone

    def delta_chunk(
        index: int, delta: dict[str, Any], last: Completion | None, calls: tuple[ToolCall, ...] = ()
    ) -> dict[str, Any]:
        """Delta chunks carry no logprobs: each choice's last chunk carries them all."""
        if delta and index not in begun:
            delta = {**delta, "role": "assistant"}
            begun.add(index)
        logprobs = None if last is None else chat_logprobs(last)
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": None if logprobs is None else logprobs.model_dump(),
            "finish_reason": None if last is None else tool_finish_reason(last, calls),
        }
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}

    def chunk(index: int, text: str | None, last: Completion | None) -> dict[str, Any]:
        return delta_chunk(index, {} if text is None else {"content": text}, last)

    if plan is None or not plan.reads_calls:
        stream_chunk: ChunkBuilder = chunk
    else:
        reading = plan
        stream_chunk = tool_chunks(lambda index: reading.stream(calls_seed(rid, index)), delta_chunk)
    last = messages[-1].content
    return await respond(request, response, service, body, prompt, params, last, build, stream_chunk, lora)


def tool_finish_reason(completion: Completion, calls: tuple[ToolCall, ...]) -> str:
    """`tool_calls` for a whole answer that calls tools; otherwise as any answer."""
    return "tool_calls" if calls and completion.finish_reason == FinishReason.STOP else openai_finish_reason(completion)


DeltaChunk = Callable[[int, dict[str, Any], Completion | None, tuple[ToolCall, ...]], dict[str, Any]]


def tool_chunks(reader_for: Callable[[int], ToolStream], delta_chunk: DeltaChunk) -> ChunkBuilder:
    """Chat chunks for an answer that may call tools, as OpenAI streams them, each choice read on its own
    (`reader_for` its index): its text as it is known to be text; then for each call its `id`, `type` and
    `function.name` (with empty arguments), then its `function.arguments` in pieces; then the choice's last
    chunk, `finish_reason: "tool_calls"`."""
    readers: dict[int, ToolStream] = {}

    def build(choice: int, text: str | None, last: Completion | None) -> dict[str, Any] | list[dict[str, Any]]:
        if text is None and last is None:
            return delta_chunk(choice, {}, None, ())
        if choice not in readers:
            readers[choice] = reader_for(choice)
        reader = readers[choice]
        if last is None:
            known = reader.feed(text or "")
            return [delta_chunk(choice, {"content": known}, None, ())] if known else []
        rest, calls = reader.finish(last.text)
        bodies = [delta_chunk(choice, {"content": rest}, None, ())] if rest else []
        for index, call in enumerate(calls):
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            bodies.append(delta_chunk(choice, {"tool_calls": [head]}, None, ()))
            for piece in argument_pieces(call.arguments):
                fragment = {"index": index, "function": {"arguments": piece}}
                bodies.append(delta_chunk(choice, {"tool_calls": [fragment]}, None, ()))
        return [*bodies, delta_chunk(choice, {}, last, calls)]

    return build
