"""Server-sent events for a streamed answer, as OpenAI streams them: chunks, then `data: [DONE]`.

Under uvicorn each piece leaves as the model writes it. Under Mangum the same events arrive in
one response, since a function returns its body whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from handler.core.errors import ServiceError
from handler.core.types import Completion, FinishReason
from handler.service.answer_stream import AnswerStream, overall

log = logging.getLogger(__name__)

# The index of the choice, and a piece of its text, or None and the choice's finished answer for its last
# chunk (its finish reason, and the log-probabilities when they were asked for); None and None for a bare
# chunk: one chunk's body, or a list of chunks' bodies (none, for a piece held back; several, for a finished
# answer's tool calls).
ChunkBuilder = Callable[[int, str | None, Completion | None], dict[str, Any] | list[dict[str, Any]]]
Finished = Callable[[Completion], None]


def event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def chunk_events(bodies: dict[str, Any] | list[dict[str, Any]]) -> str:
    """One chunk's event, or those of a list of chunks (nothing for an empty one)."""
    return "".join(event(body) for body in (bodies if isinstance(bodies, list) else [bodies]))


async def events(
    stream: AnswerStream,
    chunk: ChunkBuilder,
    usage_chunk: Callable[[tuple[Completion, ...]], dict[str, Any]] | None,
    finished: Finished,
) -> AsyncIterator[str]:
    """The events of one answer: each choice's pieces as they come, tagged with its index, then each
    choice's last chunk. However it ends (done, failed, or the client gone, which cancels this
    generator), the generation is told to stop, so the model is free for the next request; an answer
    the service failed is logged as an error, one the client abandoned as cancelled."""
    completed = False
    ended = FinishReason.CANCELLED  # unless it failed: a client gone cancels or closes this generator, no Exception
    try:
        async for index, piece in stream.indexed():
            if text := chunk_events(chunk(index, piece, None)):
                yield text
        choices = stream.choices
        assert choices
        for index, completion in enumerate(choices):
            yield chunk_events(chunk(index, None, completion))
        if usage_chunk is not None:
            yield event(usage_chunk(choices))
        finished(overall(choices))
        completed = True
        yield event("[DONE]")
    except ServiceError as exc:  # after the 200 went out: the error travels as an event, as OpenAI sends it
        ended = FinishReason.ERROR
        log.error("%s while streaming: %s", exc.error_type, exc.cause)
        error = {"type": exc.error_type, "message": exc.openai_message(exc.param), "param": exc.param, "code": exc.code}
        yield event({"error": error})
    except Exception:
        ended = FinishReason.ERROR
        raise
    finally:
        stream.cancel()
        if not completed:
            finished(Completion("", ended, 0, 0))


def sse_response(body: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )
