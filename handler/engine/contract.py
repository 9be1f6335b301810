"""What the engine is asked for and gives back, without importing llama.cpp: the service imports this
at start-up, the engine itself (`handler.engine.scheduler`) only when the model is first needed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from handler.core.types import FinishReason, SamplingParams, TokenLogprob
from handler.engine.latency import HistogramSnapshot


class EngineError(RuntimeError):
    """Base of the scheduler's own errors."""


class EngineLoadError(EngineError):
    """The model or its context could not be created; nothing was kept."""


class EngineClosed(EngineError):
    """The scheduler was closed (or stopped on a fault) before this work was done."""


class DecodeError(EngineError):
    """llama_decode failed for a batch this sequence was in; other sequences go on."""


class InvalidRequest(ValueError):
    """What only the loaded model can tell is wrong with a request (a token id outside its vocabulary, a
    grammar llama.cpp cannot parse): the caller's to fix. `param` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class EngineSettings:
    """What the model and its context need."""

    model_path: str
    n_ctx: int  # tokens in the one KV pool all sequences share (kv_unified)
    n_batch: int  # tokens per llama_decode, new tokens and prompt chunks together
    n_parallel: int  # slots: sequences decoding at once
    n_threads: int  # <= 0: every usable core
    n_gpu_layers: int
    use_mmap: bool
    cache_prompt: bool = True  # keep finished sequences' KV cells for prefix reuse
    flash_attn: bool = False  # llama-cpp-python's default, so answers match create_completion's
    embedding_pooling: str = "model"  # model (its declared pooling, else mean), mean, cls or last
    embedding_normalize: bool = False  # L2, as llama-cpp-python's embed(normalize=True)
    draft_max: int = 0  # prompt-lookup draft tokens per sequence and step; 0: no speculation
    draft_ngram: int = 4  # tokens a draft's lookup matches
    draft_max_sequences: int = 2  # drafts only while at most this many sequences decode


@dataclass(frozen=True)
class Generated:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # from admission to the answer, not counting the wait for a slot; not part of the answer's equality
    generation_seconds: float = field(compare=False)
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked for them
    stop: str | None = None  # the stop string that ended it, if one did


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health."""

    slots: int
    active: int  # sequences admitted and not finished
    waiting: int  # submitted, not admitted yet
    n_ctx: int  # KV cells in the pool
    reserved_cells: int  # worst case of the active sequences
    cached_cells: int  # cells idle slots keep for prefix reuse
    steps: int  # llama_decode calls
    batch_tokens: int  # tokens decoded in all
    prompt_tokens_reused: int  # prompt tokens not decoded thanks to a cached prefix
    generated_tokens: int
    finished: int
    decode_failures: int
    embeddings: int = 0  # embedding inputs computed
    draft_tokens: int = 0  # prompt-lookup draft tokens verified
    draft_tokens_accepted: int = 0  # of those, the ones the sampler drew too
    prompt_tokens: int = 0  # prompt tokens of the sequences admitted, reused or decoded
    used_cells: int = 0  # KV cells holding tokens now: the running sequences' and the idle caches'
    time_to_first_token: HistogramSnapshot | None = None  # seconds from submit to the first token
    inter_token_latency: HistogramSnapshot | None = None  # seconds between a sequence's tokens


class Engine(Protocol):
    """A loaded model that generates; `handler.engine.scheduler.Scheduler` is the one implementation."""

    @property
    def n_ctx(self) -> int: ...

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]: ...

    def token_piece(self, token: int) -> bytes:
        """A token's bytes, control tokens as their text (llama-server's /tokenize pieces)."""
        ...

    def submit(
        self,
        tokens: list[int],
        params: SamplingParams,
        *,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        lora: tuple[str, float] | None = None,
        prompt_decoded: threading.Event | None = None,
    ) -> Future[Generated]:
        """`lora`: a LoRA adapter file and the scale it is applied at; `prompt_decoded`, set once the prompt's
        KV cells are computed (a later request with the same prompt copies them instead)."""
        ...

    @property
    def embedding_n_ctx(self) -> int:
        """The most tokens one embedding input may have (it is decoded in one llama_decode)."""
        ...

    def embed(self, tokens: list[int]) -> Future[tuple[float, ...]]:
        """One input's pooled vector, computed on the engine's thread between decoding steps."""
        ...

    def stats(self) -> EngineStats: ...

    def close(self) -> None: ...
