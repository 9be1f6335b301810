"""Continuous batching on llama.cpp's own C API: every running request decodes in the same
`llama_decode` call, one token each per step, as llama.cpp's llama-server does with its slots.

One thread of the scheduler's own loads the model and makes every llama.cpp call that computes
(why: `handler.engine.threads`). Other threads only submit work (a lock-protected queue and a
condition) and tokenize.

Per request (a "sequence", llama.cpp's seq_id = its slot number):
- its prompt is decoded in chunks next to the other sequences' new tokens (n_batch tokens a step
  in all, logits only on a prompt's last token), then one token a step;
- tokens are sampled by a llama.cpp sampler chain of its own, built as llama-cpp-python's
  `Llama._init_sampler` builds it, so that greedy answers are `create_completion`'s: a logit bias
  first (where llama-cpp-python runs its logit-bias processor), the penalties, a grammar (structured
  output), then the sampler proper;
- when it asks for log-probabilities, they are read from the logits its token is sampled from;
- the text follows `create_completion`'s rules (bytes of the tokens' pieces, cut at the first stop
  string, decoded as UTF-8 ignoring errors), except that max_tokens is a hard cap;
- the KV cells it may ever need (prompt + max_tokens) are reserved when it is admitted, so
  llama_decode never runs out of room: a request that does not fit waits, in order, until
  running ones finish;
- when it finishes, its cells stay in its slot as a prompt cache (llama-server's cache_prompt): a
  later request sharing a prefix with them decodes only the rest. Idle cached cells are evicted
  whenever a new reservation needs the room.

LoRA adapters apply to a whole context, so sequences under different adapters (or scales) never share
a step: each step decodes one adapter set, the oldest running sequence's first and then each set in
turn, and the others wait. An adapter is loaded on this thread the first time a request uses it. A
slot's cached cells record the adapter they were computed under, and serve only a request under the
same one (the keys and values depend on it).

Embeddings: a second context on the same model (embeddings on, pooled), created on this thread the
first time one is asked for. The loop serves one embedding input between decoding steps, alone in its
llama_decode, as llama-cpp-python's `Llama.embed` decodes a single text: the same vector, and a long
list never stalls the running generations for more than one input's decode.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from handler.core.types import FinishReason, SamplingParams, TokenLogprob
from handler.engine.contract import (
    DecodeError,
    EngineClosed,
    EngineLoadError,
    EngineSettings,
    EngineStats,
    Generated,
    InvalidRequest,
)
from handler.engine.embedding import EmbeddingContext, pooling_for
from handler.engine.sampling import build_chain, check_sampling, log_softmax_top
from handler.engine.threads import usable_cores

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@functools.cache
def _init_backend() -> None:
    """Once per process, as llama-cpp-python's Llama does (functools.cache: callers wait for the first)."""
    llama_cpp.llama_backend_init()


def _check_gguf(path: str) -> None:
    """A readable cause before llama.cpp gives a vague one."""
    file = Path(path)
    if not file.is_file():
        raise EngineLoadError(f"model file {path} does not exist")
    with file.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise EngineLoadError(f"model file {path} is not a GGUF file (starts with {magic!r})")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case for a repeated prompt: one C-level comparison
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# (adapter file, scale) a sequence decodes under; None: the model alone
LoraSet = tuple[str, float] | None


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    params: SamplingParams
    deadline: float | None
    cancelled: threading.Event | None
    on_text: Callable[[str], None] | None
    future: Future[Generated]
    stops: list[bytes]  # non-empty stop strings, matched on bytes as llama-cpp-python does
    lora: LoraSet = None

    @property
    def need(self) -> int:
        """KV cells this request may ever hold: the prompt and every token it may feed back."""
        return len(self.tokens) + self.params.max_tokens


@dataclass(eq=False)
class _EmbedRequest:
    tokens: list[int]
    future: Future[tuple[float, ...]]


@dataclass(eq=False)
class _Slot:
    id: int  # the llama.cpp seq_id
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds, by position
    seq: _Sequence | None = None
    last_used: int = 0  # admission counter, for LRU eviction and slot choice
    lora: LoraSet = None  # the adapter its cached cells were computed under


@dataclass(eq=False)
class _Sequence:
    request: _Request
    slot: _Slot
    chain: Any  # llama_sampler_p
    pending: list[int]  # prompt tokens still to decode
    started: float
    next_token: int | None = None  # sampled, to be fed back next step
    generated: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)  # bytes of the generated tokens' pieces
    strip_space: bool | None = None  # llama-cpp-python's leading-space rule after a BOS, until decided
    cut: int | None = None  # where a stop string begins in `data`
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore")
    )
    fed: int = 0  # bytes of `data` handed to the decoder (and streamed)
    sent: int = 0  # characters streamed
    # per generated token, when the request asked for log-probabilities, with where its bytes start in `data`
    logprobs: list[tuple[int, TokenLogprob]] = field(default_factory=list)
    # this step's share of the batch
    batch_tokens: list[int] = field(default_factory=list)
    logits_index: int = -1


class Scheduler:
    """Owns the llama.cpp model and context; one thread of its own runs the load and every llama.cpp
    call that computes."""

    def __init__(self, settings: EngineSettings) -> None:
        """Use `Scheduler.load`."""
        self.settings = settings
        self._cond = threading.Condition()
        self._incoming: list[_Request] = []  # under _cond
        self._embed_incoming: list[_EmbedRequest] = []  # under _cond
        self._closing = False  # under _cond
        self._closed = False
        self._vocab_lock = threading.Lock()  # other threads' tokenizer calls vs. freeing the model
        self._thread: threading.Thread | None = None
        # owned by the scheduler thread from here on
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._mem: Any = None
        self._batch: llama_cpp.llama_batch | None = None
        self._batch_size = 0
        self._n_vocab = 0
        self._n_swa = 0
        self._can_reuse = False  # partial seq_rm works (no recurrent state)
        self._can_copy = False  # seq_cp sharing cannot overfill a SWA cache
        self._pool = 0
        self._slots: list[_Slot] = []
        self._waiting: deque[_Request] = deque()
        self._active: list[_Sequence] = []  # in admission order: prompt chunks are served in it
        self._reserved = 0
        self._admissions = 0
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._bos = -1
        self._eos = -1
        self._metadata: dict[str, str] = {}
        self._adapters: dict[str, Any] = {}  # adapter file -> llama_adapter_lora_p, loaded on first use
        self._applied: LoraSet = None  # what the generation context has set now
        self._last_set: LoraSet = None  # the set the last step decoded, for the turn of the next
        self._embeds: deque[_EmbedRequest] = deque()
        self._embedding: EmbeddingContext | None = None  # created on the first embedding request
        self._embed_size = max(1, min(settings.n_batch, settings.n_ctx))  # tokens of one input, one decode
        self._n_embd = 0
        self._counters = {
            "steps": 0,
            "batch_tokens": 0,
            "prompt_tokens_reused": 0,
            "generated_tokens": 0,
            "finished": 0,
            "decode_failures": 0,
            "embeddings": 0,
        }

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

    def _load(self) -> None:
        s = self.settings
        _check_gguf(s.model_path)
        _init_backend()
        try:  # llama-cpp-python's log callback prints everything unless told otherwise (Llama(verbose=False) does)
            from llama_cpp._logger import set_verbose

            set_verbose(False)
        except ImportError:  # pragma: no cover - an internal module of llama-cpp-python
            pass
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = s.n_gpu_layers
        model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if s.use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        model = llama_cpp.llama_model_load_from_file(s.model_path.encode("utf-8"), model_params)
        if not model:
            raise EngineLoadError(f"llama.cpp could not load {s.model_path}")
        self._model = model
        threads = s.n_threads if s.n_threads > 0 else usable_cores()
        n_batch = max(min(s.n_batch, s.n_ctx), s.n_parallel)  # every decoding sequence's token fits a step
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = s.n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = s.n_parallel
        params.kv_unified = True  # one pool: a single request may use all of n_ctx
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise EngineLoadError(
                f"llama.cpp could not create a context (n_ctx {s.n_ctx}, n_parallel {s.n_parallel}) for {s.model_path}"
            )
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._bos = llama_cpp.llama_vocab_bos(self._vocab)
        self._eos = llama_cpp.llama_vocab_eos(self._vocab)
        self._pool = llama_cpp.llama_n_ctx(ctx)
        self._batch_size = llama_cpp.llama_n_batch(ctx)
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._n_swa = llama_cpp.llama_model_n_swa(model)
        self._n_embd = llama_cpp.llama_model_n_embd(model)
        stateful = llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model)
        self._can_reuse = s.cache_prompt and not stateful
        # A cell shared by two sequences is never recycled by llama.cpp's SWA cache (only single-owner
        # masked cells are), so sharing could overfill a SWA cache smaller than the pool: copy only
        # where there is no SWA, or where the SWA cache is full-size (swa_full, this version's default).
        self._can_copy = self._can_reuse and (self._n_swa == 0 or bool(params.swa_full))
        self._slots = [_Slot(i) for i in range(s.n_parallel)]
        self._metadata = self._read_metadata()

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        size = 1024
        buf = ctypes.create_string_buffer(size)
        for i in range(llama_cpp.llama_model_meta_count(self._model)):
            values: list[str] = []
            for read in (llama_cpp.llama_model_meta_key_by_index, llama_cpp.llama_model_meta_val_str_by_index):
                n = read(self._model, i, buf, size)
                if n >= size:  # the length without the terminator: grow and read again
                    size = n + 1
                    buf = ctypes.create_string_buffer(size)
                    n = read(self._model, i, buf, size)
                values.append(buf.value.decode("utf-8", errors="replace") if n >= 0 else "")
            out[values[0]] = values[1]
        return out

    def _free(self) -> None:
        """On the scheduler thread: everything llama.cpp gave us."""
        for seq in self._active:
            llama_cpp.llama_sampler_free(seq.chain)
        self._active = []
        if self._embedding is not None:
            self._embedding.free()
            self._embedding = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            self._mem = None
        for adapter in self._adapters.values():
            llama_cpp.llama_adapter_lora_free(adapter)
        self._adapters = {}
        if self._model:
            with self._vocab_lock:  # no tokenizer call is running on another thread, and none starts
                self._vocab = None
                llama_cpp.llama_model_free(self._model)
                self._model = None

    def _run(self, loaded: Future[None]) -> None:
        try:
            self._load()
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
                        or self._embeds
                    ):
                        self._cond.wait()  # idle: no spinning
                    if self._closing:
                        break
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    self._embeds.extend(self._embed_incoming)
                    self._embed_incoming.clear()
                self._step()
        except BaseException as exc:  # a fault of ours: fail everything rather than hang callers
            log.exception("llama scheduler stopped on a fault")
            fault = exc
        with self._cond:
            self._closing = True
            self._closed = True
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            self._embeds.extend(self._embed_incoming)
            self._embed_incoming.clear()
        error = EngineClosed("the model scheduler stopped" + (f": {fault!r}" if fault else ""))
        for seq in list(self._active):
            self._fail(seq, error)
        for request in self._waiting:
            if not request.future.done():
                request.future.set_exception(error)
        self._waiting.clear()
        for embed in self._embeds:
            if not embed.future.done():
                embed.future.set_exception(error)
        self._embeds.clear()
        self._free()

    # ---- any thread ---------------------------------------------------------------------------

    @property
    def bos(self) -> int:
        return int(self._bos)

    @property
    def eos(self) -> int:
        return int(self._eos)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    @property
    def n_ctx(self) -> int:
        return int(self._pool)

    @property
    def n_parallel(self) -> int:
        return self.settings.n_parallel

    @property
    def n_vocab(self) -> int:
        return int(self._n_vocab)

    @property
    def n_embd(self) -> int:
        return int(self._n_embd)

    @property
    def embedding_n_ctx(self) -> int:
        return self._embed_size

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """Callable from any thread (the vocabulary is read-only)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        with self._vocab_lock:
            vocab = self._live_vocab()
            while True:
                buf = (llama_cpp.llama_token * size)()
                n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_bos, special)
                if n >= 0:
                    return list(buf[:n])
                if -n <= size:
                    raise RuntimeError(f"llama.cpp could not tokenize {len(data)} bytes")
                size = -n

    def _live_vocab(self) -> Any:
        if self._vocab is None:
            raise EngineClosed("the model scheduler is closed")
        return self._vocab

    def _piece(self, token: int, special: bool = False) -> bytes:
        memo = self._special_pieces if special else self._pieces
        cached = memo.get(token)
        if cached is not None:
            return cached
        size = 32
        with self._vocab_lock:
            vocab = self._live_vocab()
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
                if n >= 0:
                    piece = buf.raw[:n]
                    break
                size = -n
        memo[token] = piece
        return piece

    def token_piece(self, token: int) -> bytes:
        """A token's bytes, control tokens written as their text, as llama-server's /tokenize shows them.
        Raises InvalidRequest for an id outside the vocabulary (llama.cpp would abort on it)."""
        if not 0 <= token < self._n_vocab:
            raise InvalidRequest(
                f"Token {token} is outside the model's vocabulary of {self._n_vocab} tokens.", "tokens"
            )
        return self._piece(token, special=True)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> bytes:
        """As llama-cpp-python's `Llama.detokenize`: the pieces, less a leading space after a BOS."""
        out = b"".join(self._piece(t, special) for t in tokens)
        if tokens and tokens[0] == self._bos and out[:1] == b" ":
            return out[1:]
        return out

    def token_text(self, token: int) -> str:
        """A token's text in the vocabulary (special tokens included), e.g. bos/eos for chat templates."""
        with self._vocab_lock:
            return bytes(llama_cpp.llama_vocab_get_text(self._live_vocab(), token)).decode("utf-8", errors="replace")

    def stats(self) -> EngineStats:
        with self._cond:
            incoming = len(self._incoming)
        slots = list(self._slots)
        return EngineStats(
            slots=len(slots),
            active=sum(1 for s in slots if s.seq is not None),
            waiting=incoming + len(self._waiting),
            n_ctx=self._pool,
            reserved_cells=self._reserved,
            cached_cells=sum(len(s.cached) for s in slots if s.seq is None),
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
    ) -> Future[Generated]:
        """Queue one generation. `deadline` is a time.monotonic() value; `on_text` is called from the
        scheduler thread with each streamable piece; `lora`, a LoRA adapter file and its scale. Raises
        ValueError for a request that can never fit, EngineClosed after close(); an adapter llama.cpp
        cannot load fails the future with EngineLoadError."""
        if not tokens:
            raise ValueError("the prompt has no tokens")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {params.max_tokens}")
        if len(tokens) + params.max_tokens > self._pool:
            raise ValueError(
                f"{len(tokens)} prompt tokens + max_tokens {params.max_tokens} exceed "
                f"the context of {self._pool} tokens"
            )
        with self._vocab_lock:
            check_sampling(params, self._live_vocab(), self._n_vocab)
        future: Future[Generated] = Future()
        request = _Request(
            list(tokens),
            params,
            deadline,
            cancelled,
            on_text,
            future,
            [s.encode("utf-8") for s in params.stop if s],
            None if lora is None else (lora[0], float(lora[1])),
        )
        with self._cond:
            if self._closing:
                raise EngineClosed("the model scheduler is closed")
            self._incoming.append(request)
            self._cond.notify()
        return future

    def embed(self, tokens: list[int]) -> Future[tuple[float, ...]]:
        """Queue one embedding input (tokenized with its BOS). Raises ValueError for an input longer
        than `embedding_n_ctx` or empty, EngineClosed after close()."""
        if not tokens:
            raise ValueError("the input has no tokens")
        if len(tokens) > self._embed_size:
            raise ValueError(f"{len(tokens)} input tokens exceed the embedding context of {self._embed_size} tokens")
        for token in tokens:
            if not 0 <= token < self._n_vocab:  # llama.cpp would abort on it
                raise ValueError(f"token {token} is outside the vocabulary")
        future: Future[tuple[float, ...]] = Future()
        with self._cond:
            if self._closing:
                raise EngineClosed("the model scheduler is closed")
            self._embed_incoming.append(_EmbedRequest(list(tokens), future))
            self._cond.notify()
        return future

    # ---- the scheduler thread -----------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        self._expire_waiting(now)
        for seq in list(self._active):
            reason = self._interrupted(seq.request, now)
            if reason is not None:
                self._finish(seq, reason)
        self._admit()
        if self._active:
            self._decode_step()
        if self._embeds:
            self._embed_next()

    # ---- embeddings (the scheduler thread) --------------------------------------------------------

    def _embedder(self) -> EmbeddingContext:
        """Created once, on the first embedding request: a service that never embeds pays nothing."""
        if self._embedding is None:
            s = self.settings
            self._embedding = EmbeddingContext(
                self._model,
                self._embed_size,
                s.n_threads if s.n_threads > 0 else usable_cores(),
                pooling_for(s.embedding_pooling, self._metadata),
                s.flash_attn,
                self._n_embd,
                s.embedding_normalize,
            )
        return self._embedding

    def _embed_next(self) -> None:
        request = self._embeds.popleft()
        if not request.future.set_running_or_notify_cancel():
            return
        try:
            vector = self._embedder().embed(request.tokens)
        except DecodeError as exc:
            request.future.set_exception(exc)
            return
        self._counters["embeddings"] += 1
        request.future.set_result(vector)

    @staticmethod
    def _interrupted(request: _Request, now: float) -> FinishReason | None:
        if request.cancelled is not None and request.cancelled.is_set():
            return FinishReason.CANCELLED
        if request.deadline is not None and now >= request.deadline:
            return FinishReason.TIME_LIMIT
        return None

    def _expire_waiting(self, now: float) -> None:
        """Waiting requests that were cancelled or ran out of time are answered without a slot."""
        kept: deque[_Request] = deque()
        for request in self._waiting:
            reason = self._interrupted(request, now)
            if reason is None and not request.future.cancelled():
                kept.append(request)
            elif reason is not None and request.future.set_running_or_notify_cancel():
                logprobs = None if request.params.logprobs is None else ()
                request.future.set_result(Generated("", reason, len(request.tokens), 0, 0.0, logprobs))
        self._waiting = kept

    def _usable_prefix(self, slot: _Slot, tokens: list[int], lora: LoraSet) -> int:
        """How many of the prompt's first tokens this slot's cells can serve (at most all but the
        last, whose logits are needed): none of cells computed under another adapter."""
        if not self._can_reuse or not slot.cached or slot.lora != lora:
            return 0
        keep = min(_common_prefix(slot.cached, tokens), len(tokens) - 1)
        if keep <= 0:
            return 0
        if self._n_swa > 0:
            # A SWA cache recycles a sequence's cells once they fall out of its window; the next token
            # (at position `keep`) needs every position after keep - n_swa. As llama-server does, fall
            # back to decoding the whole prompt when they are gone.
            pos_min = llama_cpp.llama_memory_seq_pos_min(self._mem, slot.id)
            if pos_min < 0 or pos_min > max(0, keep - self._n_swa):
                return 0
        return keep

    def _admit(self) -> None:
        """FIFO: the head waits until a slot is free and its worst case fits next to the running ones'."""
        while self._waiting:
            request = self._waiting[0]
            free = [slot for slot in self._slots if slot.seq is None]
            if not free or self._reserved + request.need > self._pool:
                return
            self._waiting.popleft()
            if not request.future.set_running_or_notify_cancel():  # the caller cancelled the future
                continue
            self._start(request, free)

    def _adapter(self, path: str) -> Any:
        adapter = self._adapters.get(path)
        if adapter is None:
            adapter = llama_cpp.llama_adapter_lora_init(self._model, path.encode("utf-8"))
            if not adapter:
                raise EngineLoadError(f"llama.cpp could not load the LoRA adapter {path} for this model")
            self._adapters[path] = adapter
        return adapter

    def _start(self, request: _Request, free: list[_Slot]) -> None:
        try:
            if request.lora is not None:
                self._adapter(request.lora[0])
            chain = build_chain(request.params, self._vocab, self._n_vocab)
        except (InvalidRequest, EngineLoadError) as exc:
            # InvalidRequest is checked at submit: only a llama.cpp that changed its mind gets here
            request.future.set_exception(exc)
            return
        tokens = request.tokens
        usable = {s.id: self._usable_prefix(s, tokens, request.lora) for s in self._slots}
        # the free slot whose cache serves most of the prompt; else an empty one, else the least recently used
        slot = max(free, key=lambda s: (usable[s.id], not s.cached, -s.last_used))
        keep = usable[slot.id]
        source: _Slot | None = None
        if self._can_copy:
            best = max(self._slots, key=lambda s: usable[s.id])
            if usable[best.id] > keep or (best is slot and keep < len(slot.cached)):
                # Share the prefix instead of cutting a cache: into an empty slot, or the least recently used
                # one, so that the cache that served it stays whole for the next request like it.
                slot = max(free, key=lambda s: (s is not best, not s.cached, -s.last_used))
                if slot is not best:
                    source, keep = best, usable[best.id]
        if source is not None:
            # a prefix another sequence holds (a shared system prompt): share its cells
            llama_cpp.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._mem, source.id, slot.id, 0, keep)
            slot.cached = source.cached[:keep]
        elif keep < len(slot.cached):
            if not llama_cpp.llama_memory_seq_rm(self._mem, slot.id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self._mem, slot.id, -1, -1)  # cannot cut: start afresh
                keep = 0
            slot.cached = slot.cached[:keep]
        slot.lora = request.lora  # what its cells will be computed under from here on
        self._reserved += request.need
        # idle caches give way to the reservation, least recently used first
        idle = sorted(
            (s for s in self._slots if s.seq is None and s is not slot and s.cached), key=lambda s: s.last_used
        )
        cached = sum(len(s.cached) for s in idle)
        while idle and self._reserved + cached > self._pool:
            victim = idle.pop(0)
            cached -= len(victim.cached)
            llama_cpp.llama_memory_seq_rm(self._mem, victim.id, -1, -1)
            victim.cached = []
        self._admissions += 1
        slot.last_used = self._admissions
        seq = _Sequence(request, slot, chain, tokens[keep:], time.perf_counter())
        slot.seq = seq
        self._active.append(seq)
        self._counters["prompt_tokens_reused"] += keep

    def _decode_step(self) -> None:
        """One llama_decode for every active sequence, then one sample each where a token is due."""
        batch = self._batch
        assert batch is not None
        lora = self._turn()
        in_batch = self._fill_batch(batch, lora)
        if not in_batch:
            return
        self._apply(lora)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        self._counters["steps"] += 1
        if rc != 0:
            # Only this batch's sequences fail; what llama.cpp kept of them is unknown: drop their cells.
            self._counters["decode_failures"] += 1
            log.error("llama_decode failed", extra={"rc": rc, "tokens": batch.n_tokens, "sequences": len(in_batch)})
            error = DecodeError(f"llama_decode returned {rc}")
            for seq in in_batch:
                self._fail(seq, error)
            return
        self._counters["batch_tokens"] += batch.n_tokens
        for seq in in_batch:
            seq.slot.cached.extend(seq.batch_tokens)
            if seq.next_token is None:
                del seq.pending[: len(seq.batch_tokens)]
            if seq.logits_index < 0:
                continue  # a prompt not finished yet
            logits = self._logits(seq.logits_index) if seq.request.params.logprobs is not None else None
            sampled = llama_cpp.llama_sampler_sample(seq.chain, self._ctx, seq.logits_index)
            try:
                reason = self._accept(seq, sampled, logits)
            except Exception as exc:  # the caller's on_text failed: that request ends, the others go on
                self._fail(seq, exc, keep_cache=True)
                continue
            if reason is not None:
                self._finish(seq, reason)

    def _turn(self) -> LoraSet:
        """The adapter set this step decodes: with one set running (the usual case), that one; with
        several, in the order of their oldest sequences, the one after the set decoded last step, so
        that each gets every n-th step."""
        sets = list(dict.fromkeys(seq.request.lora for seq in self._active))
        if len(sets) == 1:
            chosen = sets[0]
        elif self._last_set in sets:
            chosen = sets[(sets.index(self._last_set) + 1) % len(sets)]
        else:
            chosen = sets[0]
        self._last_set = chosen
        return chosen

    def _apply(self, lora: LoraSet) -> None:
        """Set the generation context's adapters to `lora` (llama.cpp applies them per context)."""
        if lora == self._applied:
            return
        if lora is None:
            llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[lora[0]])
            scales = (ctypes.c_float * 1)(lora[1])
            llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        self._applied = lora

    def _fill_batch(self, batch: llama_cpp.llama_batch, lora: LoraSet = None) -> list[_Sequence]:
        """First every decoding sequence's next token, then prompt chunks in admission order in the
        room left (logits only on a prompt's last token); only sequences under the adapter set `lora`."""
        # ctypes pointers into the batch; typeshed's view of them is narrower than what ctypes accepts
        token: Any = batch.token
        pos: Any = batch.pos
        n_seq_id: Any = batch.n_seq_id
        seq_id: Any = batch.seq_id
        logits: Any = batch.logits
        n = 0

        def put(seq: _Sequence, tok: int, want_logits: bool) -> None:
            nonlocal n
            token[n] = tok
            pos[n] = len(seq.slot.cached) + len(seq.batch_tokens)
            n_seq_id[n] = 1
            seq_id[n][0] = seq.slot.id
            logits[n] = want_logits
            if want_logits:
                seq.logits_index = n
            seq.batch_tokens.append(tok)
            n += 1

        in_batch: list[_Sequence] = []
        for seq in self._active:
            seq.batch_tokens = []
            seq.logits_index = -1
            if seq.next_token is not None and seq.request.lora == lora:
                put(seq, seq.next_token, True)
                in_batch.append(seq)
        for seq in self._active:
            if seq.next_token is None and seq.pending and n < self._batch_size and seq.request.lora == lora:
                take = min(len(seq.pending), self._batch_size - n)
                for i in range(take):
                    put(seq, seq.pending[i], i == len(seq.pending) - 1)
                in_batch.append(seq)
        batch.n_tokens = n
        return in_batch

    def _logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits a token is sampled from: a view, valid until the next llama_decode (samplers work
        on a copy of them)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _logprob(self, token: int, piece: bytes, logits: npt.NDArray[np.float32], top: int) -> TokenLogprob:
        """The sampled token's log-probability and the `top` most likely, with their pieces."""
        value, alternatives = log_softmax_top(logits, token, top)
        pieces = tuple((piece if i == token else self._piece(i, special=True), lp) for i, lp in alternatives)
        return TokenLogprob(piece, value, pieces)

    def _accept(self, seq: _Sequence, token: int, logits: npt.NDArray[np.float32] | None = None) -> FinishReason | None:
        """One sampled token, with create_completion's order of checks (less its UTF-8 exemption)."""
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return FinishReason.STOP  # not part of the text nor of the count
        seq.generated.append(token)
        self._counters["generated_tokens"] += 1
        piece = self._piece(token)
        if seq.strip_space is None:  # llama-cpp-python drops a leading space after a generated BOS
            seq.strip_space = token == self._bos
        if seq.strip_space and piece:
            if not seq.data and piece[:1] == b" ":
                piece = piece[1:]
            seq.strip_space = False
        before = len(seq.data)
        seq.data += piece
        wanted = seq.request.params.logprobs
        if logits is not None and wanted is not None:
            seq.logprobs.append((before, self._logprob(token, piece, logits, wanted)))
        stops = seq.request.stops
        if stops:
            found = [i for s in stops if (i := seq.data.find(s, max(0, before - len(s) + 1))) >= 0]
            if found:
                seq.cut = min(found)
                return FinishReason.STOP
        if len(seq.generated) >= seq.request.params.max_tokens:
            return FinishReason.LENGTH
        seq.next_token = token
        self._stream(seq)
        return None

    def _stream(self, seq: _Sequence) -> None:
        """Hand on what can no longer change: whole characters, short of any stop string's start."""
        on_text = seq.request.on_text
        if on_text is None:
            return
        data = seq.data
        hold = 0
        for s in seq.request.stops:
            for k in range(min(len(s) - 1, len(data)), hold, -1):
                if data.endswith(s[:k]):
                    hold = k
                    break
        safe = len(data) - hold
        if safe <= seq.fed:
            return
        text = seq.decoder.decode(bytes(data[seq.fed : safe]))
        seq.fed = safe
        if text:
            seq.sent += len(text)
            on_text(text)

    def _release(self, seq: _Sequence, keep_cache: bool) -> None:
        self._active.remove(seq)
        self._reserved -= seq.request.need
        llama_cpp.llama_sampler_free(seq.chain)
        slot = seq.slot
        slot.seq = None
        if not (keep_cache and self._can_reuse):
            llama_cpp.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.cached = []
        self._counters["finished"] += 1

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        # A cancelled sequence's cells go at once; other answers leave theirs as a prompt cache.
        self._release(seq, keep_cache=reason is not FinishReason.CANCELLED)
        data = seq.data if seq.cut is None else seq.data[: seq.cut]
        text = bytes(data).decode("utf-8", errors="ignore")
        request = seq.request
        result = Generated(
            text,
            reason,
            len(request.tokens),
            len(seq.generated),
            time.perf_counter() - seq.started,
            None if request.params.logprobs is None else self._answer_logprobs(seq),
        )
        if request.on_text is not None and len(text) > seq.sent:
            try:
                request.on_text(text[seq.sent :])
            except Exception as exc:
                request.future.set_exception(exc)
                return
        request.future.set_result(result)

    @staticmethod
    def _answer_logprobs(seq: _Sequence) -> tuple[TokenLogprob, ...]:
        """One entry per token of the text: a stop string's tokens go, and the token it begins in keeps
        only its bytes before it, so that the entries' bytes are the answer's."""
        if seq.cut is None:
            return tuple(entry for _, entry in seq.logprobs)
        cut = seq.cut
        return tuple(
            entry if start + len(entry.token) <= cut else dataclasses.replace(entry, token=entry.token[: cut - start])
            for start, entry in seq.logprobs
            if start < cut
        )

    def _fail(self, seq: _Sequence, error: BaseException, keep_cache: bool = False) -> None:
        self._release(seq, keep_cache)
        if not seq.request.future.done():
            seq.request.future.set_exception(error)
