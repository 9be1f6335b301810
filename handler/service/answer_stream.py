"""An answer, whole or as text pieces handed from the generating thread to an async consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from handler.core.types import INCOMPLETE, CacheSource, Completion


@dataclass(frozen=True)
class Answer:
    completion: Completion  # the first choice: the answer, for a request for one
    source: CacheSource
    shared: bool = False  # a MISS that joined an identical generation in flight
    more: tuple[Completion, ...] = ()  # the other choices of a request for several (OpenAI's `n`), in order

    @property
    def choices(self) -> tuple[Completion, ...]:
        return (self.completion, *self.more)


def overall(choices: tuple[Completion, ...]) -> Completion:
    """The choices of one answer as one completion, for its log line and headers: the first choice's text,
    the first finish reason that cut a choice short (else the first choice's), the prompt's tokens once and
    every choice's generated tokens, and the longest generation time (they decode together)."""
    first = choices[0]
    if len(choices) == 1:
        return first
    cut = next((c.finish_reason for c in choices if c.finish_reason in INCOMPLETE), first.finish_reason)
    return dataclasses.replace(
        first,
        finish_reason=cut,
        completion_tokens=sum(c.completion_tokens for c in choices),
        generation_seconds=max(c.generation_seconds for c in choices),
    )


class AnswerStream:
    """Text pieces from a generating thread to an async consumer; then the finished completions, one per
    choice (one, unless the request asked for several).

    Iterate it for the pieces (`indexed()` for a request for several: each piece with its choice's index);
    `choices` (and `completion`, the first) are set once iteration ends. `cancel()` (the client has gone)
    makes the generation stop at its next token and frees the model.
    """

    def __init__(self, source: CacheSource) -> None:
        self.source = source
        self.choices: tuple[Completion, ...] = ()
        self.cancelled = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._head: tuple[str, Any] | None = None
        # Text from the generating thread waits here until the event loop takes it: one wake-up of the
        # loop for however many pieces came meanwhile (the loop shares the cores with llama.cpp's threads).
        self._pending: list[tuple[int, str]] = []
        self._delivery_due = False
        self._pending_lock = threading.Lock()

    @property
    def completion(self) -> Completion | None:
        """The first choice (the answer, for a request for one); None until iteration ends."""
        return self.choices[0] if self.choices else None

    @classmethod
    def of(cls, answer: Answer) -> AnswerStream:
        stream = cls(answer.source)
        for index, choice in enumerate(answer.choices):
            stream.put_text(choice.text, index)
        stream.finish(*answer.choices)
        return stream

    def put_text(self, text: str, index: int = 0) -> None:
        """A piece of choice `index`'s text (from any thread)."""
        with self._pending_lock:
            self._pending.append((index, text))
            if self._delivery_due:
                return
            self._delivery_due = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._pending_lock:
            pieces, self._pending = self._pending, []
            self._delivery_due = False
        texts: dict[int, list[str]] = {}  # each choice's pieces in order, choices in the order they came
        for index, text in pieces:
            texts.setdefault(index, []).append(text)
        for index, parts in texts.items():
            self._queue.put_nowait(("text", (index, "".join(parts))))

    def finish(self, *choices: Completion) -> None:
        """Every choice has ended: their completions, in order."""
        self._send(("done", choices))

    def fail(self, exc: Exception) -> None:
        self._send(("error", exc))

    def _send(self, item: tuple[str, Any]) -> None:
        # after any text delivery already due: the loop runs its callbacks in order
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()

    async def first(self) -> None:
        """Wait for the first event; raise at once if it is an error."""
        self._head = await self._queue.get()
        if self._head[0] == "error":
            raise self._head[1]

    async def __aiter__(self) -> AsyncIterator[str]:
        """The pieces of an answer of one choice."""
        async for _, text in self.indexed():
            yield text

    async def indexed(self) -> AsyncIterator[tuple[int, str]]:
        """Each piece with the index of the choice it belongs to."""
        while True:
            kind, value = self._head or await self._queue.get()
            self._head = None
            if kind == "text":
                yield value
            elif kind == "done":
                self.choices = value
                return
            else:
                raise value
