"""Server-sent events for the APIs that stream named, typed events (OpenAI's Responses, Anthropic's
Messages) rather than chat chunks: `event: <name>` and `data: <json>` per event, around one answer.

The lifecycle is `sse.events`' own: however the stream ends (done, failed, or the client gone), the
generation is told to stop and the answer is logged once; a route's `EventShape` only writes events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from starlette.responses import StreamingResponse

from handler.api.common import log_answer
from handler.api.sse import sse_response
from handler.core.errors import ServiceError
from handler.core.types import Completion, FinishReason
from handler.service.answer_stream import AnswerStream

log = logging.getLogger(__name__)


def named_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventShape(Protocol):
    """The events of one streamed answer, in one API's shape."""

    def opening(self) -> list[str]:
        """Before the first piece of text (the generation has begun: errors before it are HTTP errors)."""
        ...

    def piece(self, text: str) -> list[str]:
        """A non-empty piece of the answer."""
        ...

    def closing(self, completion: Completion) -> list[str]:
        """The answer is whole (its text is the pieces, added up)."""
        ...

    def failure(self, error: ServiceError) -> list[str]:
        """The service failed the answer after the 200 went out."""
        ...


async def shaped_events(
    request: Request, stream: AnswerStream, shape: EventShape, logged_prompt: str
) -> AsyncIterator[str]:
    completed = False
    ended = FinishReason.CANCELLED  # unless it failed: a client gone cancels or closes this generator
    try:
        for event in shape.opening():
            yield event
        async for piece in stream:
            if piece:
                for event in shape.piece(piece):
                    yield event
        completion = stream.completion
        assert completion is not None
        closing = shape.closing(completion)
        log_answer(request, stream.source, completion, logged_prompt, stream=True)
        completed = True
        for event in closing:
            yield event
    except ServiceError as exc:
        ended = FinishReason.ERROR
        log.error("%s while streaming: %s", exc.error_type, exc.cause)
        for event in shape.failure(exc):
            yield event
    except Exception:
        ended = FinishReason.ERROR
        raise
    finally:
        stream.cancel()
        if not completed:
            log_answer(request, stream.source, Completion("", ended, 0, 0), logged_prompt, stream=True)


def event_stream_response(
    request: Request, stream: AnswerStream, shape: EventShape, logged_prompt: str
) -> StreamingResponse:
    return sse_response(shaped_events(request, stream, shape, logged_prompt), {"X-Cache": stream.source})
