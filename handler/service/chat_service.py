"""Answering a completion: the cache first, then one generation per distinct request.

The order is the product: memory, disk, then the model, so that a hit never loads it. A miss
joins any identical generation in flight; the answer is stored by the worker that made it,
so it is kept even when the caller has gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from handler.cache.keys import cache_key
from handler.cache.policy import CachePolicy
from handler.cache.response_cache import ResponseCache
from handler.core.errors import BadRequest, Busy, PromptTooLong
from handler.core.settings import Settings
from handler.core.types import (
    INCOMPLETE,
    CacheSource,
    ChatPrompt,
    Completion,
    FinishReason,
    Lora,
    ModelInput,
    Prompt,
    SamplingParams,
)
from handler.engine.chat_templates import ChatTemplates
from handler.service.answer_stream import Answer, AnswerStream
from handler.service.served_models import ServedModels
from handler.service.single_flight import SingleFlight
from handler.service.stats import ModelState, ServiceStats

RESPONSE_MARGIN_S = 2.0  # of a function's remaining time, kept to send the answer


def is_whole(completion: Completion, params: SamplingParams) -> bool:
    """Whether `completion` is the whole answer to a request with `params`, and so may be stored."""
    if completion.finish_reason in INCOMPLETE:
        return False
    return not (params.grammar is not None and completion.finish_reason is FinishReason.LENGTH)


@dataclass(frozen=True)
class Keyed:
    """A request's cache key, and what it was made of: `params` are the generation's too (its stop strings
    with the input's own), so the key and the generation cannot disagree."""

    key: str
    identity: str
    prompt: ModelInput
    params: SamplingParams
    lora: Lora | None = None
    adapter_identity: str | None = None


class ChatService:
    def __init__(self, settings: Settings, served: ServedModels, cache: ResponseCache) -> None:
        self.settings = settings
        self.served = served
        self.model = served.model
        self.cache = cache
        self.templates = ChatTemplates(self.model.source, lambda: self.model.opened)
        # A worker waits on each distinct generation: as many as may be pending, so that all the engine's
        # parallel sequences can be busy with plain requests, not only with streams.
        self.flights: SingleFlight[Completion] = SingleFlight(workers=settings.max_pending_generations)
        self._streams = 0  # streamed generations queued or running
        self._streams_lock = threading.Lock()

    def check_prompt(self, prompt: str) -> None:
        """Raises PromptTooLong over `max_prompt_chars` (on /v1 it names the route's prompt field)."""
        if len(prompt) > self.settings.max_prompt_chars:
            raise PromptTooLong(len(prompt), self.settings.max_prompt_chars)

    def params_for(self, max_tokens: int | None, param: str | None = None) -> SamplingParams:
        """The configured sampling for an answer of `max_tokens` (config's default when None).
        Raises BadRequest above `max_tokens_limit`, naming `param`, the field that asked for it."""
        max_tokens = self.settings.max_tokens_default if max_tokens is None else max_tokens
        if max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(
                f"{param or 'max_tokens'} is {max_tokens}, above this service's limit of "
                f"{self.settings.max_tokens_limit}.",
                param=param,
            )
        return self.settings.sampling_params(max_tokens)

    def deadline(self, remaining_ms: int | None) -> float | None:
        """When a generation must stop: the configured timeout, and in a function the invocation's own
        remaining time less a margin to send the answer, whichever comes first (time.monotonic())."""
        limits = []
        if self.settings.generation_timeout_seconds is not None:
            limits.append(self.settings.generation_timeout_seconds)
        if remaining_ms is not None:
            limits.append(max(0.0, remaining_ms / 1000 - RESPONSE_MARGIN_S))
        return time.monotonic() + min(limits) if limits else None

    async def chat_template(self) -> str | None:
        """The chat template chat messages are rendered with now (None: the config template's prompt, where
        the model has none or `prompt_format` says so), read from the model's header (once per model); what
        decides how tools are called (`handler.service.tool_calls`)."""
        if self.settings.prompt_format == "prompt_template":
            return None
        identity = await self.served.identity()
        return await run_in_threadpool(self.templates.template_source, identity)

    async def _keyed(self, prompt: Prompt, params: SamplingParams, lora: Lora | None = None) -> Keyed:
        """The key is made of what the model will see: chat messages are formatted first, with the
        template of the model the identity names (read from its file's header, once per model)."""
        identity = await self.served.identity()
        adapter = await self.served.adapter_identity(lora) if lora is not None else None
        if isinstance(prompt, ChatPrompt):
            known = self.templates.known_input(prompt, identity)
            if known is None:
                known = await run_in_threadpool(self.templates.model_input, prompt, identity)
            model_input = known
        else:
            model_input = prompt
        params = model_input.with_stops(params)
        key = self._key(model_input, params, identity, lora, adapter)
        return Keyed(key, identity, model_input, params, lora, adapter)

    def _key(
        self,
        model_input: ModelInput,
        params: SamplingParams,
        identity: str,
        lora: Lora | None = None,
        adapter: str | None = None,
    ) -> str:
        """The same input is the same answer, whichever route sent it; under an adapter, only under the
        same adapter file at the same scale. `params`: the generation's own (`Keyed.params`)."""
        adapted = None if lora is None or adapter is None else (adapter, lora.scale)
        return cache_key(identity, model_input.key_material(), params, self.settings.n_ctx, adapted)

    async def _cached(self, key: str, policy: CachePolicy) -> Answer | None:
        """The cached answer, or None, counted as a miss."""
        if policy.read:
            hit = self.cache.get_fast(key)
            if hit is not None:
                return Answer(*hit)
            slow = await run_in_threadpool(self.cache.get_slow, key)
            if slow is not None:
                return Answer(*slow)
        self.cache.count_miss()
        return None

    def _store(self, key: Keyed, completion: Completion, policy: CachePolicy) -> None:
        """Only a whole answer is the answer: one cut short by the deadline or a departed client is not kept,
        nor a structured answer that max_tokens cut (it does not parse: not the answer the grammar asks for).
        It is stored under the model that generated it, which is not the one the key was made for when
        the model file was replaced meanwhile."""
        if policy.store and is_whole(completion, key.params):
            made_by = completion.model_identity or key.identity
            adapter = completion.adapter_identity or key.adapter_identity
            same = made_by == key.identity and adapter == key.adapter_identity
            store_key = key.key if same else self._key(key.prompt, key.params, made_by, key.lora, adapter)
            self.cache.put(store_key, completion)

    async def answer(
        self,
        prompt: Prompt,
        params: SamplingParams,
        policy: CachePolicy,
        deadline: float | None = None,
        lora: Lora | None = None,
    ) -> Answer:
        """`prompt` is the model's full input, or chat messages to format with the model's template;
        `lora`, the adapter to answer with."""
        keyed = await self._keyed(prompt, params, lora)
        cached = await self._cached(keyed.key, policy)
        if cached is not None:
            return cached

        def generate() -> Completion:
            completion = self.model.generate(keyed.prompt, keyed.params, deadline, lora=lora)
            self._store(keyed, completion, policy)
            return completion

        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                completion, leader = await self.flights.run(keyed.key, generate, self._free_slots(), wait)
            except Busy:
                raise Busy(self.pending) from None  # flights and streams both count
            except TimeoutError:  # the generation it joined runs past this request's own deadline
                return Answer(Completion("", FinishReason.TIME_LIMIT, 0, 0), CacheSource.MISS, shared=True)
            if leader or completion.finish_reason not in INCOMPLETE:
                return Answer(completion, CacheSource.MISS, shared=not leader)
            # What it joined was cut short by the deadline of the request that started it: this one makes
            # its own answer, within its own deadline, as a generation like any other (counted against
            # max_pending_generations, refused when they are all taken, joined by identical requests).

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        policy: CachePolicy,
        deadline: float | None = None,
        lora: Lora | None = None,
    ) -> AnswerStream:
        """As `answer`, piece by piece. A hit is one piece. A miss runs its own generation (streams do not
        join each other) and counts against `max_pending_generations`; it returns once the first piece
        is out, so a fault before it (no model, context overflow, busy) is still a plain HTTP error."""
        keyed = await self._keyed(prompt, params, lora)
        cached = await self._cached(keyed.key, policy)
        if cached is not None:
            return AnswerStream.of(cached)
        with self._streams_lock:
            if self.pending >= self.settings.max_pending_generations:
                raise Busy(self.pending)
            self._streams += 1
        stream = AnswerStream(CacheSource.MISS)

        def generate() -> None:
            try:
                completion = self.model.generate(
                    keyed.prompt, keyed.params, deadline, cancelled=stream.cancelled, on_text=stream.put_text, lora=lora
                )
                self._store(keyed, completion, policy)
                stream.finish(completion)
            except Exception as exc:  # handed to the consumer, which raises it
                stream.fail(exc)
            finally:
                with self._streams_lock:
                    self._streams -= 1

        context = contextvars.copy_context()  # the request id follows into the thread's log lines
        threading.Thread(target=context.run, args=(generate,), name="stream", daemon=True).start()
        try:
            await stream.first()
        except asyncio.CancelledError:  # the request was given up before its first piece: so is the generation
            stream.cancel()
            raise
        return stream

    def close(self) -> None:
        """At shutdown: let generations in flight finish, then free the model and the cache."""
        self.flights.close()
        self.model.close()
        self.cache.close()

    def stats(self) -> ServiceStats:
        """What the service holds now; never loads the model. Blocking: the disk tier counts its entries."""
        model, engine = self.model, self.model.engine
        state = ModelState(
            file=Path(self.settings.model_path).name,
            loaded=model.loaded,
            available=True if model.loaded else model.source.present(),
            load_seconds=model.load_seconds,
            generations=model.generations,
        )
        return ServiceStats(state, engine.stats() if engine is not None else None, self.pending, self.cache.stats())

    @property
    def cache_faults(self) -> int:
        """Cache tier faults since start: a counter, cheap enough to read per request."""
        return self.cache.faults

    @property
    def pending(self) -> int:
        """Distinct generations queued or running, streams included."""
        return self.flights.in_flight + self._streams

    def _free_slots(self) -> int:
        """What is left of `max_pending_generations` for flights, once the running streams are counted."""
        return max(0, self.settings.max_pending_generations - self._streams)
