"""Answering a completion: the cache first, then one generation per distinct request.

The order is the product: memory, disk, then the model, so that a hit never loads it. A miss
joins any identical generation in flight; the answer is stored by the worker that made it,
so it is kept even when the caller has gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from handler.cache.keys import cache_key
from handler.cache.policy import CachePolicy
from handler.cache.tiered import HIT_DISK, HIT_MEMORY, MISS, ResponseCache
from handler.config import Settings
from handler.errors import BadRequest
from handler.model import TIME_LIMIT, Completion, ModelHolder, SamplingParams
from handler.single_flight import SingleFlight


RESPONSE_MARGIN_S = 2.0  # of a function's remaining time, kept to send the answer


@dataclass(frozen=True)
class Answer:
    completion: Completion
    source: str  # HIT-MEMORY, HIT-DISK or MISS, as the X-Cache header says
    shared: bool = False  # a MISS that joined an identical generation already in flight


class ChatService:
    def __init__(self, settings: Settings, model: ModelHolder, cache: ResponseCache) -> None:
        self.settings = settings
        self.model = model
        self.cache = cache
        self.flights: SingleFlight[Completion] = SingleFlight()
        self._identity: str | None = None

    def check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.settings.max_prompt_chars:
            raise BadRequest(
                f"The prompt is {len(prompt)} characters, above this service's limit of "
                f"{self.settings.max_prompt_chars}. Shorten it."
            )

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        max_tokens = self.settings.max_tokens_default if max_tokens is None else max_tokens
        if max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(
                f"max_tokens is {max_tokens}, above this service's limit of {self.settings.max_tokens_limit}."
            )
        return SamplingParams.from_settings(self.settings, max_tokens)

    def _model_identity(self) -> str:
        """Computed once per container; blocking (a stat, a few reads, or a HEAD request)."""
        if self._identity is None:
            self._identity = self.model.source.identity()
        return self._identity

    def deadline(self, remaining_ms: int | None) -> float | None:
        """When a generation must stop: the configured timeout, and in a function the invocation's own
        remaining time less a margin to send the answer, whichever comes first (time.monotonic())."""
        limits = []
        if self.settings.generation_timeout_seconds is not None:
            limits.append(self.settings.generation_timeout_seconds)
        if remaining_ms is not None:
            limits.append(max(0.0, remaining_ms / 1000 - RESPONSE_MARGIN_S))
        return time.monotonic() + min(limits) if limits else None

    async def answer(self, kind: str, prompt: str, params: SamplingParams, policy: CachePolicy,
                     deadline: float | None = None) -> Answer:
        """`prompt` is the model's full input; `kind` names the answer's shape in the key."""
        identity = self._identity or await run_in_threadpool(self._model_identity)
        key = cache_key(kind, identity, prompt, params, self.settings.n_ctx)
        if policy.read:
            hit = self.cache.get_memory(key)
            if hit is not None:
                return Answer(hit, HIT_MEMORY)
            hit = await run_in_threadpool(self.cache.get_disk, key)
            if hit is not None:
                return Answer(hit, HIT_DISK)
        self.cache.misses += 1

        def generate() -> Completion:
            completion = self.model.complete(prompt, params, deadline)
            if policy.store and completion.finish_reason != TIME_LIMIT:  # a cut-short answer is not the answer
                self.cache.put(key, completion)
            return completion

        completion, leader = await self.flights.run(key, generate, self.settings.max_pending_generations)
        return Answer(completion, MISS, shared=not leader)
