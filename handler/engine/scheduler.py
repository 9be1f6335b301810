"""Continuous batching on llama.cpp's own C API: every running request decodes in the same
`llama_decode` call, one token each per step, as llama.cpp's llama-server does with its slots.

One thread of the scheduler's own loads the model and makes every llama.cpp call that computes
(why: `handler.engine.threads`); other threads only submit work (a queue under a condition) and
tokenize. Each step: answer requests cancelled or out of time, admit waiting ones in order into free
slots (`handler.engine.slots`: KV reservations, prompt cache, eviction), fill one batch with every
decoding sequence's next token and then prompt chunks (logits only on a prompt's last token), decode
it (`handler.engine.llama_context`), sample each due token with the sequence's own llama.cpp sampler
chain (llama-cpp-python's, so greedy answers are `create_completion`'s), and add it to the sequence's
text (`handler.engine.output`: stop strings, max_tokens, streaming).

LoRA adapters apply to a whole context, so sequences under different adapters (or scales) never share
a step: each step decodes one adapter set, the oldest running sequence's first and then each set in
turn, and the others wait. Embeddings: a second context on the model, made the first time one is asked
for; the loop serves one input between decoding steps, alone in its llama_decode as llama-cpp-python's
`Llama.embed` decodes a text, so a long list never stalls the generations for more than one input.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

from handler.core.types import FinishReason, SamplingParams
from handler.engine.contract import (
    DecodeError,
    EngineClosed,
    EngineLoadError,
    EngineSettings,
    EngineStats,
    Generated,
    InvalidRequest,
)
from handler.engine.embedding import EmbeddingQueue
from handler.engine.latency import TokenLatency
from handler.engine.llama_context import ContextView, LlamaContext
from handler.engine.output import SequenceOutput
from handler.engine.slots import (
    EmbedRequest,
    LoraSet,
    Request,
    Sequence,
    SequenceState,
    Slot,
    SlotTable,
    next_lora_set,
)
from handler.engine.speculation import Drafter

__all__ = ["EngineClosed", "EngineLoadError", "EngineSettings", "Generated", "Scheduler"]

log = logging.getLogger(__name__)


class Scheduler(ContextView):
    """Owns the llama.cpp model and context; one thread of its own runs the load and every llama.cpp
    call that computes."""

    def __init__(self, settings: EngineSettings) -> None:
        """Use `Scheduler.load`."""
        self.settings = settings
        self._cond = threading.Condition()
        self._incoming: list[Request] = []  # under _cond
        self._embed_incoming: list[EmbedRequest] = []  # under _cond
        self._closing = False  # under _cond
        self._closed = False
        self._thread: threading.Thread | None = None
        # owned by the scheduler thread from here on
        self._llama = LlamaContext(settings)
        self._kv = SlotTable(self._llama, settings.n_parallel, settings.cache_prompt)
        self._waiting: deque[Request] = deque()
        self._active: list[Sequence] = []  # in admission order: prompt chunks are served in it
        self._last_set: LoraSet = None  # the set the last step decoded, for the turn of the next
        self._embed_size = max(1, min(settings.n_batch, settings.n_ctx))  # tokens of one input, one decode
        self._embeds = EmbeddingQueue(lambda: self._llama.embedding_context(self._embed_size))
        names = ("steps", "batch_tokens", "prompt_tokens_reused", "generated_tokens", "finished", "decode_failures")
        more = ("draft_tokens", "draft_tokens_accepted", "prompt_tokens")
        self._counters = dict.fromkeys((*names, *more), 0)
        self._latency = TokenLatency()

    # ---- life cycle -------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: EngineSettings) -> Scheduler:
        """Start the thread, load the model and create the context on it, and wait for that.
        Raises EngineLoadError, with no thread left behind."""
        if settings.n_parallel < 1 or settings.n_ctx < 1 or settings.n_batch < 1:
            raise EngineLoadError(f"invalid engine settings: {settings}")
        scheduler = cls(settings)
        loaded: Future[None] = Future()
        thread = threading.Thread(target=scheduler._run, args=(loaded,), name="llama-scheduler", daemon=True)
        scheduler._thread = thread
        thread.start()
        try:
            loaded.result()
        except BaseException as exc:
            thread.join()
            if isinstance(exc, EngineLoadError):
                raise
            raise EngineLoadError(f"loading {settings.model_path} failed: {exc!r}") from exc
        return scheduler

    def close(self) -> None:
        """Stop the thread; work not finished fails with EngineClosed; context and model are freed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _free(self) -> None:
        """On the scheduler thread: everything llama.cpp gave us, what was made on the model first."""
        for seq in self._active:
            self._llama.free_chain(seq.chain)
        self._active = []
        self._embeds.free()
        self._llama.free()

    def _take_incoming(self) -> None:  # under _cond
        self._waiting.extend(self._incoming)
        self._incoming.clear()
        self._embeds.waiting.extend(self._embed_incoming)
        self._embed_incoming.clear()

    def _run(self, loaded: Future[None]) -> None:
        try:
            self._llama.load()
        except BaseException as exc:
            self._free()
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        fault: BaseException | None = None
        try:
            while True:
                with self._cond:
                    while not (
                        self._closing
                        or self._incoming
                        or self._waiting
                        or self._active
                        or self._embed_incoming
                        or self._embeds.waiting
                    ):
                        self._cond.wait()  # idle: no spinning
                    if self._closing:
                        break
                    self._take_incoming()
                self._step()
        except BaseException as exc:  # a fault of ours: fail everything rather than hang callers
            log.exception("llama scheduler stopped on a fault")
            fault = exc
        with self._cond:
            self._closing = True
            self._closed = True
            self._take_incoming()
        error = EngineClosed("the model scheduler stopped" + (f": {fault!r}" if fault else ""))
        for seq in list(self._active):
            self._fail(seq, error)
        unstarted: list[Request | EmbedRequest] = [*self._waiting, *self._embeds.waiting]
        for request in unstarted:
            if not request.future.done():
                request.future.set_exception(error)
        self._waiting.clear()
        self._embeds.waiting.clear()
        self._free()

    # ---- any thread (the vocabulary and the model's sizes: ContextView's) ----------------------

    @property
    def n_parallel(self) -> int:
        return self.settings.n_parallel

    @property
    def embedding_n_ctx(self) -> int:
        return self._embed_size

    def stats(self) -> EngineStats:
        with self._cond:
            incoming = len(self._incoming)
        slots = list(self._kv.slots)
        return EngineStats(
            slots=len(slots),
            active=sum(1 for s in slots if s.seq is not None),
            waiting=incoming + len(self._waiting),
            n_ctx=self._llama.n_ctx,
            reserved_cells=self._kv.reserved,
            cached_cells=self._kv.cached_cells(),
            used_cells=self._kv.used_cells(),
            time_to_first_token=self._latency.time_to_first_token.snapshot(),
            inter_token_latency=self._latency.inter_token.snapshot(),
            embeddings=self._embeds.computed,
            **self._counters,
        )

    def submit(
        self,
        tokens: list[int],
        params: SamplingParams,
        *,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        lora: LoraSet = None,
        prompt_decoded: threading.Event | None = None,
    ) -> Future[Generated]:
        """Queue one generation. `deadline` is a time.monotonic() value; `on_text` is called from the scheduler
        thread with each streamable piece; `lora`, a LoRA adapter file and its scale; `prompt_decoded` is set
        once the prompt's cells are in the KV cache. Raises ValueError for a request that can never fit,
        EngineClosed after close(); an adapter llama.cpp cannot load fails the future with EngineLoadError."""
        request = Request.new(tokens, params, deadline, cancelled, on_text, lora, pool=self._llama.n_ctx)
        request.prompt_decoded = prompt_decoded
        self._llama.check_sampling(params)
        with self._cond:
            if self._closing:
                raise EngineClosed("the model scheduler is closed")
            self._incoming.append(request)
            self._cond.notify()
        return request.future

    def embed(self, tokens: list[int]) -> Future[tuple[float, ...]]:
        """Queue one embedding input (tokenized with its BOS). Raises ValueError for an input longer
        than `embedding_n_ctx` or empty, EngineClosed after close()."""
        request = EmbedRequest.new(tokens, self._embed_size, self._llama.n_vocab)
        with self._cond:
            if self._closing:
                raise EngineClosed("the model scheduler is closed")
            self._embed_incoming.append(request)
            self._cond.notify()
        return request.future

    # ---- the scheduler thread -----------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        self._expire_waiting(now)
        for seq in list(self._active):
            reason = seq.request.interrupted(now)
            if reason is not None:
                self._finish(seq, reason)
        self._admit()
        if self._active:
            self._decode_step()
        if self._embeds.waiting:
            self._embeds.serve_one()

    def _expire_waiting(self, now: float) -> None:
        """Waiting requests that were cancelled or ran out of time are answered without a slot."""
        kept: deque[Request] = deque()
        for request in self._waiting:
            reason = request.interrupted(now)
            if reason is None and not request.future.cancelled():
                kept.append(request)
            elif reason is not None and request.future.set_running_or_notify_cancel():
                logprobs = None if request.params.logprobs is None else ()
                request.future.set_result(Generated("", reason, len(request.tokens), 0, 0.0, logprobs))
        self._waiting = kept

    def _admit(self) -> None:
        """FIFO: the head waits until a slot is free and its worst case fits next to the running ones'."""
        while self._waiting:
            free = self._kv.free_slots_for(self._waiting[0])
            if not free:
                return
            request = self._waiting.popleft()
            if not request.future.set_running_or_notify_cancel():  # the caller cancelled the future
                continue
            self._start(request, free)

    def _start(self, request: Request, free: list[Slot]) -> None:
        try:
            if request.lora is not None:
                self._llama.load_adapter(request.lora[0])
            chain = self._llama.new_chain(request.params)
        except (InvalidRequest, EngineLoadError) as exc:
            # InvalidRequest is checked at submit: only a llama.cpp that changed its mind gets here
            request.future.set_exception(exc)
            return
        slot, keep = self._kv.place(request, free)
        output = SequenceOutput(request.stops, request.params.max_tokens, request.on_text)
        seq = Sequence(request, slot, chain, request.tokens[keep:], time.perf_counter(), output)
        if self.settings.draft_max > 0 and not self._llama.stateful:  # recurrent state cannot drop a draft
            seq.drafter = Drafter(request.tokens, self.settings.draft_ngram, self.settings.draft_max)
        slot.seq = seq
        self._active.append(seq)
        self._counters["prompt_tokens_reused"] += keep
        self._counters["prompt_tokens"] += len(request.tokens)

    def _decode_step(self) -> None:
        """One llama_decode for every active sequence, then one sample each where a token is due."""
        llama = self._llama
        lora = self._turn()
        in_batch = self._fill_batch(lora)
        if not in_batch:
            return
        llama.set_lora(lora)
        rc = llama.decode()
        self._counters["steps"] += 1
        n_tokens = llama.batch_used
        if rc != 0:
            # Only this batch's sequences fail; what llama.cpp kept of them is unknown: drop their cells.
            self._counters["decode_failures"] += 1
            log.error("llama_decode failed", extra={"rc": rc, "tokens": n_tokens, "sequences": len(in_batch)})
            error = DecodeError(f"llama_decode returned {rc}")
            for seq in in_batch:
                self._fail(seq, error)
            return
        self._counters["batch_tokens"] += n_tokens
        for seq in in_batch:
            seq.decoded()
            if seq.logits_index < 0:
                continue  # a prompt not finished yet
            try:
                reason = self._sample(seq)
            except Exception as exc:  # the caller's on_text failed: that request ends, the others go on
                self._kv.truncate(seq, self._kept_cells(seq, 0))
                self._fail(seq, exc, keep_cache=True)
                continue
            if reason is not None:
                self._finish(seq, reason)

    def _sample(self, seq: Sequence) -> FinishReason | None:
        """The sequence's next token, and after it each draft the sampler draws too, from the logits the
        draft before it produced; the cells of drafts it did not draw are dropped."""
        llama, drafts = self._llama, seq.drafts
        accepted = 0
        reason = None
        before = seq.output.n_tokens
        for index in range(seq.logits_index, seq.logits_index + len(drafts) + 1):
            logits = llama.logits(index) if seq.request.params.logprobs is not None else None
            token = llama.sample(seq.chain, index)
            reason = self._accept(seq, token, logits)
            if reason is not None or accepted == len(drafts) or token != drafts[accepted]:
                break
            accepted += 1  # its cell holds this very token: the logits after it are the next ones
        if drafts:
            assert seq.drafter is not None
            seq.drafter.verified(len(drafts), accepted)
            self._counters["draft_tokens"] += len(drafts)
            self._counters["draft_tokens_accepted"] += accepted
            self._kv.truncate(seq, self._kept_cells(seq, accepted))
        if seq.output.n_tokens > before:
            produced = seq.output.n_tokens - before
            seq.last_token_at = self._latency.tokens(produced, seq.request.submitted, seq.last_token_at)
        return reason

    @staticmethod
    def _kept_cells(seq: Sequence, accepted: int) -> int:
        """The cells that hold the context after this step: all but the drafts not accepted."""
        return len(seq.slot.cached) - len(seq.drafts) + accepted

    def _turn(self) -> LoraSet:
        self._last_set = next_lora_set([seq.request.lora for seq in self._active], self._last_set)
        return self._last_set

    def _fill_batch(self, lora: LoraSet = None) -> list[Sequence]:
        """First every decoding sequence's next token, then prompt chunks in admission order in the
        room left (logits only on a prompt's last token); only sequences under the adapter set `lora`."""
        llama = self._llama
        llama.clear_batch()

        def put(seq: Sequence, token: int, want_logits: bool) -> None:
            index = llama.add_to_batch(token, len(seq.slot.cached) + len(seq.batch_tokens), seq.slot.id, want_logits)
            if want_logits and seq.logits_index < 0:
                seq.logits_index = index  # the first sampled token's; drafts' logits follow it
            seq.batch_tokens.append(token)

        for seq in self._active:
            seq.batch_tokens = []
            seq.logits_index = -1
            seq.drafts = []
        decoding = [s for s in self._active if s.state is SequenceState.DECODING and s.request.lora == lora]
        # A wide batch keeps the cores busy already; drafts would add their logits to every step of it.
        drafting = len(decoding) <= self.settings.draft_max_sequences
        for placed, seq in enumerate(decoding, start=1):
            put(seq, seq.next_token, True)
            if drafting and seq.drafter is not None:
                # drafts only where an accepted one could still be part of the answer (the request's KV
                # reservation covers them), in the room the decoding tokens still to place leave
                budget = seq.request.params.max_tokens - seq.output.n_tokens - 1
                room = llama.batch_size - llama.batch_used - (len(decoding) - placed)
                seq.drafts = seq.drafter.draft(min(budget, room))
                for token in seq.drafts:
                    put(seq, token, True)
        in_batch = list(decoding)
        for seq in self._active:
            room = llama.batch_size - llama.batch_used
            if seq.state is SequenceState.PREFILL and room > 0 and seq.request.lora == lora:
                for i in range(min(len(seq.pending), room)):
                    put(seq, seq.pending[i], i == len(seq.pending) - 1)
                in_batch.append(seq)
        return in_batch

    def _accept(self, seq: Sequence, token: int, logits: npt.NDArray[np.float32] | None = None) -> FinishReason | None:
        """One sampled token, with create_completion's order of checks (less its UTF-8 exemption)."""
        llama = self._llama
        if llama.is_eog(token):
            return FinishReason.STOP  # not part of the text nor of the count
        self._counters["generated_tokens"] += 1
        wanted = seq.request.params.logprobs
        logprob = None
        if logits is not None and wanted is not None:
            logprob = functools.partial(llama.token_logprob, token, logits, wanted)
        reason = seq.output.add(llama.piece(token), is_bos=token == llama.bos, logprob=logprob)
        if reason is None:
            seq.feed(token)
        return reason

    def _release(self, seq: Sequence, keep_cache: bool) -> None:
        self._active.remove(seq)
        self._llama.free_chain(seq.chain)
        self._kv.release(seq, keep_cache)
        self._counters["finished"] += 1

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        # A cancelled sequence's cells go at once; other answers leave theirs as a prompt cache.
        self._release(seq, keep_cache=reason is not FinishReason.CANCELLED)
        output, request = seq.output, seq.request
        text = output.text()
        logprobs = None if request.params.logprobs is None else output.logprobs()
        seconds = time.perf_counter() - seq.started
        result = Generated(text, reason, len(request.tokens), output.n_tokens, seconds, logprobs, output.stop)
        try:
            output.flush(text)
        except Exception as exc:
            request.future.set_exception(exc)
            return
        request.future.set_result(result)

    def _fail(self, seq: Sequence, error: BaseException, keep_cache: bool = False) -> None:
        self._release(seq, keep_cache)
        if not seq.request.future.done():
            seq.request.future.set_exception(error)
