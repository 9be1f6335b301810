"""Answering a completion: the cache first, then one generation per distinct request.

The order is the product: memory, disk, then the model, so that a hit never loads it. A miss
joins any identical generation in flight; the answer is stored by the worker that made it,
so it is kept even when the caller has gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
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
    Choices,
    Completion,
    FinishReason,
    Lora,
    ModelInput,
    Prompt,
    SamplingParams,
    choice_seed,
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


def choice_params(params: SamplingParams, n: int) -> tuple[SamplingParams, ...]:
    """The sampling of each of `n` choices of one prompt: `params`, each choice with its own seed (the
    request's seed plus its index; the first choice's is the request's own, so `n: 1` is the plain answer).
    At temperature 0 every choice is the same greedy answer, as OpenAI's are."""
    return tuple(params if i == 0 else dataclasses.replace(params, seed=choice_seed(params.seed, i)) for i in range(n))


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
    n: int = 1  # choices sampled from the prompt (OpenAI's `n`)

    @property
    def runs(self) -> tuple[SamplingParams, ...]:
        """The generations that make the choices: one per choice, each with its seed; at temperature 0 one
        for them all, since greedy decoding draws nothing and every choice would be that same answer."""
        return choice_params(self.params, self.n if self.params.temperature > 0 else 1)

    def spread(self, made: tuple[Completion, ...]) -> tuple[Completion, ...]:
        """The `n` choices, from what `runs` made."""
        return made if len(made) == self.n else made * self.n


class ChatService:
    def __init__(self, settings: Settings, served: ServedModels, cache: ResponseCache) -> None:
        self.settings = settings
        self.served = served
        self.model = served.model
        self.cache = cache
        self.templates = ChatTemplates(self.model.source, lambda: self.model.opened)
        # A worker waits on each distinct generation: as many as may be pending, so that all the engine's
        # parallel sequences can be busy with plain requests, not only with streams. A request for n sampled
        # choices is one flight (identical ones join it) that counts as the n generations it runs.
        self.flights: SingleFlight[tuple[Completion, ...]] = SingleFlight(workers=settings.max_pending_generations)
        self._streams = 0  # streamed generations queued or running
        self._streams_lock = threading.Lock()

    def check_prompt(self, prompt: str) -> None:
        """Raises PromptTooLong over `max_prompt_chars` (on /v1 it names the route's prompt field)."""
        if len(prompt) > self.settings.max_prompt_chars:
            raise PromptTooLong(len(prompt), self.settings.max_prompt_chars)

    def check_choices(self, n: int) -> None:
        """Raises BadRequest (naming `n`) for a number of choices this service does not make: under 1, above
        `max_choices`, or above `max_pending_generations` (each choice is a generation)."""
        settings = self.settings
        limit, setting = min(
            (settings.max_choices, "max_choices"), (settings.max_pending_generations, "max_pending_generations")
        )
        if not 1 <= n <= limit:
            raise BadRequest(f"`n` is {n}: this service makes 1 to {limit} choices per request ({setting}).", param="n")

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

    async def _keyed(self, prompt: Prompt, params: SamplingParams, lora: Lora | None = None, n: int = 1) -> Keyed:
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
        key = self._key(model_input, params, identity, lora, adapter, n)
        return Keyed(key, identity, model_input, params, lora, adapter, n)

    def _key(
        self,
        model_input: ModelInput,
        params: SamplingParams,
        identity: str,
        lora: Lora | None = None,
        adapter: str | None = None,
        n: int = 1,
    ) -> str:
        """The same input is the same answer, whichever route sent it; under an adapter, only under the
        same adapter file at the same scale. `params`: the generation's own (`Keyed.params`); for `n`
        choices, their seeds join the key (one answer's keys stay as they were)."""
        adapted = None if lora is None or adapter is None else (adapter, lora.scale)
        seeds = tuple(p.seed for p in choice_params(params, n)) if n > 1 else ()
        return cache_key(identity, model_input.key_material(), params, self.settings.n_ctx, adapted, seeds)

    async def _cached(self, key: str, policy: CachePolicy, n: int = 1) -> Answer | None:
        """The cached answer (all `n` choices of it), or None, counted as a miss."""
        if policy.read:
            hit = self.cache.get_fast(key) if n == 1 else self.cache.get_choices_fast(key)
            if hit is None:
                slow = self.cache.get_slow if n == 1 else self.cache.get_choices_slow
                hit = await run_in_threadpool(slow, key)
            if hit is not None:
                value, source = hit
                choices = value.completions if isinstance(value, Choices) else (value,)
                if len(choices) == n:  # the key names n: anything else is not this answer
                    return Answer(choices[0], source, more=choices[1:])
        self.cache.count_miss()
        return None

    def _store(self, key: Keyed, choices: tuple[Completion, ...], policy: CachePolicy) -> None:
        """Only a whole answer is the answer: one cut short by the deadline or a departed client is not kept,
        nor a structured answer that max_tokens cut (it does not parse: not the answer the grammar asks for);
        an answer of several choices only when every one is whole. It is stored under the model that
        generated it, which is not the one the key was made for when the model file was replaced meanwhile."""
        if policy.store and all(is_whole(completion, key.params) for completion in choices):
            completion = choices[0]
            made_by = completion.model_identity or key.identity
            adapter = completion.adapter_identity or key.adapter_identity
            same = made_by == key.identity and adapter == key.adapter_identity
            store_key = key.key if same else self._key(key.prompt, key.params, made_by, key.lora, adapter, key.n)
            self.cache.put(store_key, completion if len(choices) == 1 else Choices(choices))

    async def answer(
        self,
        prompt: Prompt,
        params: SamplingParams,
        policy: CachePolicy,
        deadline: float | None = None,
        lora: Lora | None = None,
        n: int = 1,
    ) -> Answer:
        """`prompt` is the model's full input, or chat messages to format with the model's template;
        `lora`, the adapter to answer with; `n`, how many choices to sample from it (`check_choices`)."""
        keyed = await self._keyed(prompt, params, lora, n)
        cached = await self._cached(keyed.key, policy, n)
        if cached is not None:
            return cached

        def generate() -> tuple[Completion, ...]:
            choices = keyed.spread(self.model.generate_choices(keyed.prompt, keyed.runs, deadline, lora=lora))
            self._store(keyed, choices, policy)
            return choices

        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                choices, leader = await self.flights.run(
                    keyed.key, generate, self._free_slots(), wait, weight=len(keyed.runs)
                )
            except Busy:
                raise Busy(self.pending) from None  # flights and streams both count
            except TimeoutError:  # the generation it joined runs past this request's own deadline
                late = Completion("", FinishReason.TIME_LIMIT, 0, 0)
                return Answer(late, CacheSource.MISS, shared=True, more=(late,) * (n - 1))
            if leader or all(choice.finish_reason not in INCOMPLETE for choice in choices):
                return Answer(choices[0], CacheSource.MISS, shared=not leader, more=choices[1:])
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
        n: int = 1,
    ) -> AnswerStream:
        """As `answer`, piece by piece (each piece with its choice's index). A hit is one piece per choice. A
        miss runs its own generation (streams do not join each other) and counts against
        `max_pending_generations` (once per generation it runs: n for n sampled choices); it returns once the
        first piece is out, so a fault before it (no model, context overflow, busy) is still a plain HTTP
        error."""
        keyed = await self._keyed(prompt, params, lora, n)
        cached = await self._cached(keyed.key, policy, n)
        if cached is not None:
            return AnswerStream.of(cached)
        runs = len(keyed.runs)
        with self._streams_lock:
            if self.pending + runs > self.settings.max_pending_generations:
                raise Busy(self.pending)
            self._streams += runs
        stream = AnswerStream(CacheSource.MISS)

        def put_text(index: int, text: str) -> None:
            for choice in range(index, n, runs):  # a generation that makes every choice streams to each
                stream.put_text(text, choice)

        def generate() -> None:
            try:
                made = self.model.generate_choices(
                    keyed.prompt, keyed.runs, deadline, cancelled=stream.cancelled, on_text=put_text, lora=lora
                )
                choices = keyed.spread(made)
                self._store(keyed, choices, policy)
                stream.finish(*choices)
            except Exception as exc:  # handed to the consumer, which raises it
                stream.fail(exc)
            finally:
                with self._streams_lock:
                    self._streams -= runs

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
