"""The one object that owns the loaded model: lazy load, one generation at a time.

llama.cpp contexts are not thread-safe, so a single lock covers both the load and every
generation. Requests that arrive together before the model is loaded queue on that lock:
the first loads the model, the rest find it loaded. A failed load leaves nothing behind,
so the next request tries again instead of the container staying broken.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler.config import Settings
from handler.errors import ContextOverflow, GenerationFailed, ModelUnavailable
from handler.model_source import ModelSource, model_source

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class SamplingParams:
    """What, besides the prompt, decides the answer of one generation."""

    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int

    @classmethod
    def from_settings(cls, settings: Settings, max_tokens: int) -> SamplingParams:
        return cls(
            max_tokens=max_tokens,
            stop=tuple(settings.stop),
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=settings.min_p,
            repeat_penalty=settings.repeat_penalty,
            seed=settings.seed,
        )


@dataclass(frozen=True)
class Completion:
    """A finished answer, with what a cache entry and a usage report need."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


Loader = Callable[[Settings], "Llama"]

TIME_LIMIT = "time_limit"


class Deadline:
    """A llama-cpp-python stopping criterion, checked after every token: stop once past the deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.reached = False

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.reached = True
        return self.reached


def check_gguf(path: str) -> None:
    """Fail with a readable cause before llama.cpp does with a vague one."""
    file = Path(path)
    if not file.is_file():
        raise ModelUnavailable(f"model file {path} does not exist")
    with file.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelUnavailable(f"model file {path} is not a GGUF file (starts with {magic!r})")


def usable_cores() -> int:
    """All the cores this process may use: llama-cpp-python's default is half, which a function
    (one request per container) leaves idle: 1.8x slower decoding measured on 2 cores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_llama(settings: Settings) -> Llama:
    """Load the GGUF with llama-cpp-python; imported here so that importing the service stays cheap."""
    check_gguf(settings.model_path)
    # llama.cpp's OpenMP threads otherwise spin after each generation and slow whatever runs next on
    # the same cores: memory hits measured 1.4 ms instead of 0.7 ms behind a resident model. Read by
    # libgomp when llama_cpp is first imported; an operator's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from llama_cpp import Llama

    threads = settings.n_threads or usable_cores()
    try:
        return Llama(
            model_path=settings.model_path,
            n_gpu_layers=settings.n_gpu_layers,
            n_ctx=settings.n_ctx,
            n_batch=settings.n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            seed=settings.seed,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelUnavailable(f"llama.cpp could not load {settings.model_path}: {exc}") from exc


class ModelHolder:
    """Owns the model of one container; every method is blocking and meant for a worker thread."""

    def __init__(self, settings: Settings, loader: Loader = load_llama, source: ModelSource | None = None) -> None:
        self.settings = settings
        self.source = source or model_source(settings)
        self._loader = loader
        self._lock = threading.Lock()
        self._llama: Any = None
        self.load_seconds: float | None = None
        self.generations = 0

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _ensure_loaded(self) -> Any:
        """Load under the caller's lock; on failure nothing is kept, so a later call retries."""
        if self._llama is None:
            started = time.perf_counter()
            try:
                local = self.settings.model_copy(update={"model_path": self.source.local_path()})
                llama = self._loader(local)
            except ModelUnavailable:
                raise
            except Exception as exc:  # an unexpected loader fault is still "unavailable", never fatal
                raise ModelUnavailable(f"loading {self.settings.model_path} failed: {exc!r}") from exc
            self.load_seconds = time.perf_counter() - started
            log.info("model loaded", extra={"model_path": self.settings.model_path, "load_s": self.load_seconds})
            self._llama = llama
        return self._llama

    def complete(self, prompt: str, params: SamplingParams, deadline: float | None = None) -> Completion:
        """Generate one answer, stopping at `deadline` (time.monotonic()) with finish_reason time_limit.

        Raises ModelUnavailable, ContextOverflow or GenerationFailed.
        """
        out_of_time = Deadline(deadline)
        with self._lock:
            llama = self._ensure_loaded()
            prompt_tokens = len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
            if prompt_tokens + params.max_tokens > self.settings.n_ctx:
                raise ContextOverflow(prompt_tokens, params.max_tokens, self.settings.n_ctx)
            try:
                # SamplingParams' fields are create_completion's own keyword names: nothing to map, nothing to drift.
                out = llama.create_completion(
                    prompt=prompt, stopping_criteria=out_of_time, **{**asdict(params), "stop": list(params.stop)}
                )
            except Exception as exc:
                raise GenerationFailed(f"llama.cpp generation failed: {exc!r}") from exc
            self.generations += 1
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["text"].strip(),
            finish_reason=TIME_LIMIT if out_of_time.reached else choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", prompt_tokens)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )
