"""The llama.cpp model and its generation context, as llama-server's `server_context` holds them: the
load and the free, the batch, the model's metadata and its vocabulary, the LoRA adapters set on the
context, and the memory (KV cache) calls the slots make.

Loaded, used and freed on the scheduler thread (why: `handler.engine.threads`), except the vocabulary:
tokenizing and reading token pieces are safe from any thread, under a lock that freeing the model takes.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from handler.core.types import SamplingParams, TokenLogprob
from handler.engine.contract import EngineClosed, EngineLoadError, EngineSettings, InvalidRequest
from handler.engine.embedding import EmbeddingContext, pooling_for
from handler.engine.sampling import build_chain, check_sampling, log_softmax_top
from handler.engine.slots import LoraSet
from handler.engine.threads import usable_cores

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


class LlamaContext:
    """What llama.cpp gave us for one model; the scheduler owns it. Its sizes read 0 (bos and eos -1)
    until `load`."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._vocab_lock = threading.Lock()  # other threads' tokenizer calls vs. freeing the model
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._mem: Any = None
        self._batch: llama_cpp.llama_batch | None = None
        # ctypes pointers into the batch; typeshed's view of them is narrower than what ctypes accepts
        self._token: Any = None
        self._pos: Any = None
        self._n_seq_id: Any = None
        self._seq_id: Any = None
        self._logits: Any = None
        self.batch_size = 0  # tokens a batch holds
        self.batch_used = 0  # tokens in it now
        self.n_ctx = 0
        self.n_vocab = 0
        self.n_embd = 0
        self.n_swa = 0
        self.bos = -1
        self.eos = -1
        self.stateful = False  # recurrent or hybrid: a sequence's cells cannot be cut partway
        self.swa_full = False  # the SWA cache holds the whole context
        self.metadata: dict[str, str] = {}
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._adapters: dict[str, Any] = {}  # adapter file -> llama_adapter_lora_p, loaded on first use
        self._applied: LoraSet = None  # what the context has set now

    # ---- life cycle (the scheduler thread) ------------------------------------------------------

    def load(self) -> None:
        """Raises EngineLoadError (or what llama.cpp's bindings raise); `free` releases what was made."""
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
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.bos = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos = llama_cpp.llama_vocab_eos(self._vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.batch_size = llama_cpp.llama_n_batch(ctx)
        batch = self._batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self._token, self._pos, self._n_seq_id = batch.token, batch.pos, batch.n_seq_id
        self._seq_id, self._logits = batch.seq_id, batch.logits
        self.n_swa = llama_cpp.llama_model_n_swa(model)
        self.n_embd = llama_cpp.llama_model_n_embd(model)
        self.stateful = bool(llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model))
        self.swa_full = bool(params.swa_full)
        self.metadata = self._read_metadata()

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

    def free(self) -> None:
        """The batch, the context, the adapters and the model; whatever else was made on the model (sampler
        chains, the embedding context) is the caller's to free first."""
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
            self._token = self._pos = self._n_seq_id = self._seq_id = self._logits = None
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

    def embedding_context(self, size: int) -> EmbeddingContext:
        """A second context on the model, for embedding inputs of up to `size` tokens; the caller frees
        it before `free`. Raises DecodeError where llama.cpp cannot make it."""
        s = self.settings
        threads = s.n_threads if s.n_threads > 0 else usable_cores()
        pooling = pooling_for(s.embedding_pooling, self.metadata)
        return EmbeddingContext(self._model, size, threads, pooling, s.flash_attn, self.n_embd, s.embedding_normalize)

    # ---- the vocabulary (any thread) ------------------------------------------------------------

    def _live_vocab(self) -> Any:
        if self._vocab is None:
            raise EngineClosed("the model scheduler is closed")
        return self._vocab

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
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

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes; `special`: control tokens written as their text."""
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
        if not 0 <= token < self.n_vocab:
            raise InvalidRequest(f"Token {token} is outside the model's vocabulary of {self.n_vocab} tokens.", "tokens")
        return self.piece(token, special=True)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> bytes:
        """As llama-cpp-python's `Llama.detokenize`: the pieces, less a leading space after a BOS."""
        out = b"".join(self.piece(t, special) for t in tokens)
        if tokens and tokens[0] == self.bos and out[:1] == b" ":
            return out[1:]
        return out

    def token_text(self, token: int) -> str:
        """A token's text in the vocabulary (special tokens included), e.g. bos/eos for chat templates."""
        with self._vocab_lock:
            return bytes(llama_cpp.llama_vocab_get_text(self._live_vocab(), token)).decode("utf-8", errors="replace")

    def check_sampling(self, params: SamplingParams) -> None:
        """Raises InvalidRequest for what only the model can refuse (`sampling.check_sampling`)."""
        with self._vocab_lock:
            check_sampling(params, self._live_vocab(), self.n_vocab)

    # ---- decoding and sampling (the scheduler thread) -------------------------------------------

    def clear_batch(self) -> None:
        self.batch_used = 0

    def add_to_batch(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """One token of one sequence at `pos`; `logits`: computed for it. Returns its index in the batch."""
        n = self.batch_used
        self._token[n] = token
        self._pos[n] = pos
        self._n_seq_id[n] = 1
        self._seq_id[n][0] = seq_id
        self._logits[n] = logits
        self.batch_used = n + 1
        return n

    def decode(self) -> int:
        """llama_decode of the batch; its return code."""
        assert self._batch is not None
        self._batch.n_tokens = self.batch_used
        return int(llama_cpp.llama_decode(self._ctx, self._batch))

    def new_chain(self, params: SamplingParams) -> Any:
        """A sampler chain (llama_sampler_p) for one sequence; free it with `free_chain`."""
        return build_chain(params, self._vocab, self.n_vocab)

    @staticmethod
    def free_chain(chain: Any) -> None:
        llama_cpp.llama_sampler_free(chain)

    def sample(self, chain: Any, index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(chain, self._ctx, index))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits a token is sampled from: a view, valid until the next llama_decode (samplers work
        on a copy of them)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def token_logprob(self, token: int, logits: npt.NDArray[np.float32], top: int, piece: bytes) -> TokenLogprob:
        """The sampled token's log-probability and the `top` most likely, with their pieces (`piece`:
        the sampled token's, as the answer has it)."""
        value, alternatives = log_softmax_top(logits, token, top)
        pieces = tuple((piece if i == token else self.piece(i, special=True), lp) for i, lp in alternatives)
        return TokenLogprob(piece, value, pieces)

    # ---- LoRA adapters (the scheduler thread) ---------------------------------------------------

    def load_adapter(self, path: str) -> None:
        """Loaded once, on first use; raises EngineLoadError for a file llama.cpp refuses."""
        if path not in self._adapters:
            adapter = llama_cpp.llama_adapter_lora_init(self._model, path.encode("utf-8"))
            if not adapter:
                raise EngineLoadError(f"llama.cpp could not load the LoRA adapter {path} for this model")
            self._adapters[path] = adapter

    def set_lora(self, lora: LoraSet) -> None:
        """Set the context's adapters to `lora` (llama.cpp applies them per context); loaded already."""
        if lora == self._applied:
            return
        if lora is None:
            llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[lora[0]])
            scales = (ctypes.c_float * 1)(lora[1])
            llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        self._applied = lora

    # ---- the KV cache's memory (the scheduler thread; `slots.KVMemory`) --------------------------

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        """Drop a sequence's cells in [p0, p1) (-1: open); False where they cannot be cut there."""
        return bool(llama_cpp.llama_memory_seq_rm(self._mem, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_pos_min(self, seq_id: int) -> int:
        return int(llama_cpp.llama_memory_seq_pos_min(self._mem, seq_id))


class ContextView:
    """What any thread may ask of the model of a `LlamaContext` held as `_llama`: the Scheduler's
    public face of the one it owns."""

    _llama: LlamaContext

    @property
    def bos(self) -> int:
        return self._llama.bos

    @property
    def eos(self) -> int:
        return self._llama.eos

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._llama.metadata)

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._llama.n_vocab

    @property
    def n_embd(self) -> int:
        return self._llama.n_embd

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """Callable from any thread (the vocabulary is read-only)."""
        return self._llama.tokenize(text, add_bos=add_bos, special=special)

    def token_piece(self, token: int) -> bytes:
        """A token's bytes, control tokens written as their text, as llama-server's /tokenize shows them.
        Raises InvalidRequest for an id outside the vocabulary (llama.cpp would abort on it)."""
        return self._llama.token_piece(token)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> bytes:
        """As llama-cpp-python's `Llama.detokenize`: the pieces, less a leading space after a BOS."""
        return self._llama.detokenize(tokens, special=special)

    def token_text(self, token: int) -> str:
        """A token's text in the vocabulary (special tokens included), e.g. bos/eos for chat templates."""
        return self._llama.token_text(token)
