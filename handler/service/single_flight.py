"""Identical requests in flight share one generation.

The work runs on its own thread pool and resolves a concurrent future that every waiter
awaits through `asyncio.shield`: a waiter that goes away (client disconnect, cancellation)
neither cancels the work nor the answer the others are waiting for, and the answer is still
stored. Futures are loop-agnostic, so this works the same under uvicorn and under Mangum.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from handler.core.errors import Busy

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, workers: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate")
        self._lock = threading.RLock()  # a future done before add_done_callback calls back at once
        self._calls: dict[str, Future[T]] = {}
        self._weights: dict[str, int] = {}  # what each key's work counts for against `max_calls`

    async def run(
        self,
        key: str,
        work: Callable[[], T],
        max_calls: int | None = None,
        wait: float | None = None,
        weight: int = 1,
    ) -> tuple[T, bool]:
        """The result of `work` for `key`, and whether this call ran it (False: it joined another's).

        With `max_calls`, new work is refused (Busy) where it would take the work queued or running past
        that many, each counted `weight` times (a request for n choices is n generations); joining work
        already in flight is always allowed, since it costs nothing. A call that joins waits at most `wait`
        seconds (TimeoutError): the work it joined keeps its own deadline.
        """
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if future is None:
                if max_calls is not None and self.in_flight + weight > max_calls:
                    raise Busy(self.in_flight)
                future = self._executor.submit(contextvars.copy_context().run, work)  # the request id follows
                self._calls[key], self._weights[key] = future, weight
                future.add_done_callback(lambda done: self._forget(key, done))
        result = asyncio.shield(asyncio.wrap_future(future))
        if leader or wait is None:
            return await result, leader
        return await asyncio.wait_for(result, wait), leader

    def _forget(self, key: str, future: Future[T]) -> None:
        with self._lock:
            if self._calls.get(key) is future:
                del self._calls[key], self._weights[key]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    @property
    def in_flight(self) -> int:
        """The work queued or running, each counted its weight."""
        with self._lock:
            return sum(self._weights.values())
