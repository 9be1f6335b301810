"""The one object that owns the loaded model: lazy load, one generation at a time, on one thread.

llama.cpp contexts are not thread-safe, and its CPU backend (OpenMP) keeps a pool of
n_threads - 1 workers for every thread that calls it. A second pool makes the process hold more
OpenMP threads than cores, and libgomp then stops spinning at the barriers between operations:
every token pays hundreds of sleeps and wake-ups (measured: 0.6 voluntary context switches per
token with one calling thread, 180 once four threads had generated). So the load and every
generation run on a single thread of the holder's own, which also serializes them: requests that
arrive together before the model is loaded queue there, the first loads it, the rest find it
loaded. A failed load leaves nothing behind, so the next request tries again instead of the
container staying broken.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler.chat_format import ChatPrompt, ChatTemplate
from handler.config import Settings
from handler.errors import ContextOverflow, GenerationFailed, ModelUnavailable
from handler.model_source import ModelSource, model_source
from handler.text_stream import TextStream

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
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

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
    """A finished answer, as the model wrote it (not stripped), with what a cache entry and usage need."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # How this answer was made, for logs and metrics; not cached (a hit made nothing).
    generation_seconds: float = field(default=0.0, compare=False)
    load_seconds: float | None = field(default=None, compare=False)  # set when this request loaded the model

    @property
    def tokens_per_second(self) -> float | None:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else None


Loader = Callable[[Settings], "Llama"]
Prompt = str | ChatPrompt  # a raw prompt, or chat messages to format once the model is known

TIME_LIMIT = "time_limit"  # finish reasons of ours, besides llama.cpp's stop and length
CANCELLED = "cancelled"
LENGTH = "length"


class StopSignal:
    """A llama-cpp-python stopping criterion, checked after every token: stop once past the deadline,
    once the caller has gone, or at `max_tokens`, which llama-cpp-python itself does not check while
    the text ends inside a UTF-8 character: a model emitting broken bytes ran past it up to the end
    of the context, where llama.cpp failed. It is also where a streamed answer sees each new token."""

    def __init__(self, deadline: float | None, cancelled: threading.Event | None, prompt_tokens: int,
                 max_tokens: int) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.token_limit = prompt_tokens + max_tokens
        self.reason: str | None = None
        self.stream: TextStream | None = None

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        """`input_ids`: the prompt and the tokens generated so far (the newest is not among them yet)."""
        if self.stream is not None:
            self.stream.feed(input_ids)
        if self.cancelled is not None and self.cancelled.is_set():
            self.reason = CANCELLED
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = TIME_LIMIT
        elif len(input_ids) >= self.token_limit:
            self.reason = LENGTH
        return self.reason is not None


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
            use_mmap=settings.use_mmap,
            seed=settings.seed,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelUnavailable(f"llama.cpp could not load {settings.model_path}: {exc}") from exc


class ModelHolder:
    """Owns the model of one container; `complete` blocks its caller (a worker thread) while the
    holder's own thread does the work."""

    def __init__(self, settings: Settings, loader: Loader = load_llama, source: ModelSource | None = None) -> None:
        self.settings = settings
        self.source = source or model_source(settings)
        self._loader = loader
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._llama: Any = None
        self._template: ChatTemplate | bool | None = None  # False: the model has none
        self.load_seconds: float | None = None
        self.generations = 0

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _ensure_loaded(self) -> Any:
        """On failure nothing is kept, so a later call retries."""
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
            self._template = None
        return self._llama

    def complete(self, prompt: Prompt, params: SamplingParams, deadline: float | None = None, *,
                 cancelled: threading.Event | None = None, on_text: Callable[[str], None] | None = None) -> Completion:
        """Generate one answer, stopping at `deadline` (time.monotonic()) with finish_reason time_limit,
        or once `cancelled` is set. With `on_text`, the text is streamed to it piece by piece.

        Raises ModelUnavailable, ContextOverflow, BadRequest (messages the chat template refuses) or
        GenerationFailed.
        """
        return self._thread.submit(self._complete, prompt, params, deadline, cancelled, on_text).result()

    def _complete(self, prompt: Prompt, params: SamplingParams, deadline: float | None,
                  cancelled: threading.Event | None, on_text: Callable[[str], None] | None) -> Completion:
        loaded_before = self._llama is not None
        llama = self._ensure_loaded()
        load_seconds = None if loaded_before else self.load_seconds
        tokens, stop = self._prepare(llama, prompt, params)
        if len(tokens) + params.max_tokens > self.settings.n_ctx:
            raise ContextOverflow(len(tokens), params.max_tokens, self.settings.n_ctx)
        if cancelled is not None and cancelled.is_set():  # gone while waiting for the model
            return Completion("", CANCELLED, len(tokens), 0)
        signal = StopSignal(deadline, cancelled, len(tokens), params.max_tokens)
        if on_text is not None:
            signal.stream = TextStream(llama, len(tokens), stop, on_text)
        started = time.perf_counter()
        try:
            # SamplingParams' fields are create_completion's own keyword names: nothing to map, nothing to drift.
            out = llama.create_completion(
                **{**asdict(params), "prompt": tokens, "stop": stop, "stopping_criteria": signal}
            )
        except Exception as exc:
            raise GenerationFailed(f"llama.cpp generation failed: {exc!r}") from exc
        self.generations += 1
        generation_seconds = time.perf_counter() - started
        choice, usage = out["choices"][0], out.get("usage") or {}
        if signal.stream is not None:
            signal.stream.finish(choice["text"])
        return Completion(
            text=choice["text"],
            finish_reason=signal.reason or choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", len(tokens))),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            generation_seconds=generation_seconds,
            load_seconds=load_seconds,
        )

    def _prepare(self, llama: Any, prompt: Prompt, params: SamplingParams) -> tuple[list[int], list[str]]:
        """The model's input as tokens (tokenized as create_completion tokenizes a string) and the stop strings."""
        stop = list(params.stop)
        if isinstance(prompt, ChatPrompt):
            if self._template is None:
                self._template = ChatTemplate.of(llama) or False
            if self._template:
                rendered = self._template.render(prompt.messages)
                return rendered.tokens, stop + list(rendered.stop)
            stop += [s for s in prompt.fallback_stop if s not in stop]
            prompt = prompt.fallback
        return llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True), stop
