"""An answer, whole or as text pieces handed from the generating thread to an async consumer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from handler.core.types import CacheSource, Completion


@dataclass(frozen=True)
class Answer:
    completion: Completion
    source: CacheSource
    shared: bool = False  # a MISS that joined an identical generation already in flight


class AnswerStream:
    """Text pieces from a generating thread to an async consumer; then the finished completion.

    Iterate it for the pieces; `completion` is set once iteration ends. `cancel()` (the client has
    gone) makes the generation stop at its next token and frees the model.
    """

    def __init__(self, source: CacheSource) -> None:
        self.source = source
        self.completion: Completion | None = None
        self.cancelled = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._head: tuple[str, Any] | None = None
        # Text from the generating thread waits here until the event loop takes it: one wake-up of the
        # loop for however many pieces came meanwhile (the loop shares the cores with llama.cpp's threads).
        self._pending: list[str] = []
        self._delivery_due = False
        self._pending_lock = threading.Lock()

    @classmethod
    def of(cls, answer: Answer) -> AnswerStream:
        stream = cls(answer.source)
        stream.put_text(answer.completion.text)
        stream.finish(answer.completion)
        return stream

    def put_text(self, text: str) -> None:
        with self._pending_lock:
            self._pending.append(text)
            if self._delivery_due:
                return
            self._delivery_due = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._pending_lock:
            text = "".join(self._pending)
            self._pending.clear()
            self._delivery_due = False
        self._queue.put_nowait(("text", text))

    def finish(self, completion: Completion) -> None:
        self._send(("done", completion))

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
        while True:
            kind, value = self._head or await self._queue.get()
            self._head = None
            if kind == "text":
                yield value
            elif kind == "done":
                self.completion = value
                return
            else:
                raise value
