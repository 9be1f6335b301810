"""The one object that owns the loaded model: lazy load, one generation at a time, on one thread.

llama.cpp contexts are not thread-safe, and its CPU backend (OpenMP) keeps a pool of workers for
every thread that calls it: a second pool oversubscribes the cores and slows every token. So the load and every
generation run on a single thread of the holder's own, which also serializes them: requests that
arrive together before the model is loaded queue there, the first loads it, the rest find it
loaded. A failed load leaves nothing behind, so the next request tries again instead of the
container staying broken.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from handler.core.config import Settings
from handler.core.errors import ContextOverflow, GenerationFailed, ModelUnavailable
from handler.core.types import ChatPrompt, Completion, FinishReason, ModelInput, SamplingParams
from handler.engine.chat_format import ChatTemplate
from handler.engine.gguf_header import ChatMetadata, read_chat_metadata
from handler.engine.model_source import ModelSource, OpenedModel, model_source
from handler.engine.text_stream import TextStream

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

Loader = Callable[[Settings], "Llama"]


class StopSignal:
    """A llama-cpp-python stopping criterion, checked after every token: stop once past the deadline,
    once the caller has gone, or at `max_tokens`, which llama-cpp-python itself does not check while
    the text ends inside a UTF-8 character: a model emitting broken bytes ran past it up to the end
    of the context, where llama.cpp failed. It is also where a streamed answer sees each new token."""

    def __init__(
        self, deadline: float | None, cancelled: threading.Event | None, prompt_tokens: int, max_tokens: int
    ) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.token_limit = prompt_tokens + max_tokens
        self.reason: FinishReason | None = None
        self.stream: TextStream | None = None

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        """`input_ids`: the prompt and the tokens generated so far (the newest is not among them yet)."""
        if self.stream is not None:
            self.stream.feed(input_ids)
        if self.cancelled is not None and self.cancelled.is_set():
            self.reason = FinishReason.CANCELLED
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = FinishReason.TIME_LIMIT
        elif len(input_ids) >= self.token_limit:
            self.reason = FinishReason.LENGTH
        return self.reason is not None


def usable_cores() -> int:
    """All the cores this process may use: llama-cpp-python's default is half, which leaves a
    function's cores idle (the README has the figures)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_llama(settings: Settings) -> Llama:
    """Load the GGUF with llama-cpp-python; imported here so that importing the service stays cheap."""
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
        self._opened: OpenedModel | None = None
        self._metadata: dict[str, ChatMetadata] = {}  # by model identity
        self.load_seconds: float | None = None
        self.generations = 0

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _ensure_loaded(self) -> Any:
        """On failure nothing is kept, so a later call retries. A model whose file has been replaced at
        its path (renamed over, rewritten) is a new model: it is loaded in place of the old one, which
        keeps answering (under its own identity) if the new one cannot be loaded."""
        if self._llama is None:
            self._load()
        elif self._opened is not None and self.source.replaced(self._opened):
            log.warning("model file replaced; loading the new one", extra={"model_path": self.settings.model_path})
            try:
                self._load()
            except ModelUnavailable as exc:
                log.error(
                    "the replacement cannot be loaded; the loaded model keeps answering",
                    extra={"model_path": self.settings.model_path, "error": exc.cause},
                )
        return self._llama

    def _load(self) -> None:
        started = time.perf_counter()
        opened = self.source.open()
        try:
            llama = self._loader(self.settings.model_copy(update={"model_path": opened.path}))
        except Exception as exc:  # an unexpected loader fault is still "unavailable", never fatal
            opened.release()
            if isinstance(exc, ModelUnavailable):
                raise
            raise ModelUnavailable(f"loading {self.settings.model_path} failed: {exc!r}") from exc
        self._unload()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            extra={"model_path": self.settings.model_path, "load_s": self.load_seconds, "model": opened.identity},
        )
        self._llama, self._opened = llama, opened

    def complete(
        self,
        prompt: ModelInput,
        params: SamplingParams,
        deadline: float | None = None,
        *,
        cancelled: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Completion:
        """Generate one answer, stopping at `deadline` (time.monotonic()) with finish_reason time_limit,
        or once `cancelled` is set. With `on_text`, the text is streamed to it piece by piece.

        Raises ModelUnavailable, ContextOverflow, BadRequest (messages the chat template refuses) or
        GenerationFailed.
        """
        return self._thread.submit(
            contextvars.copy_context().run, self._complete, prompt, params, deadline, cancelled, on_text
        ).result()

    @property
    def identity(self) -> str | None:
        """The loaded model's identity; None before it is loaded."""
        return self._opened.identity if self._opened is not None else None

    def known_identity(self) -> str | None:
        """The identity of the model at the source when it is known without blocking (at most a stat)."""
        return self.source.known_identity()

    def current_identity(self) -> str:
        """The identity of the model at the source now; blocking. A model file gone from its path
        leaves the loaded model answering, so its identity stands."""
        try:
            return self.source.identity()
        except ModelUnavailable:
            if self.identity is not None:
                return self.identity
            raise

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._unload()

    def _unload(self) -> None:
        llama, self._llama = self._llama, None
        opened, self._opened = self._opened, None
        if llama is not None and hasattr(llama, "close"):
            llama.close()
        if opened is not None:
            opened.release()

    def _complete(
        self,
        prompt: ModelInput,
        params: SamplingParams,
        deadline: float | None,
        cancelled: threading.Event | None,
        on_text: Callable[[str], None] | None,
    ) -> Completion:
        loaded_before = self._llama is not None
        llama = self._ensure_loaded()
        load_seconds = None if loaded_before else self.load_seconds
        tokens, stop = self._prepare(llama, prompt, params)
        if len(tokens) + params.max_tokens > self.settings.n_ctx:
            raise ContextOverflow(len(tokens), params.max_tokens, self.settings.n_ctx)
        if cancelled is not None and cancelled.is_set():  # gone while waiting for the model
            return Completion("", FinishReason.CANCELLED, len(tokens), 0, model_identity=self.identity)
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
            finish_reason=signal.reason or FinishReason(choice.get("finish_reason") or "stop"),
            prompt_tokens=int(usage.get("prompt_tokens", len(tokens))),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            generation_seconds=generation_seconds,
            load_seconds=load_seconds,
            model_identity=self.identity,
        )

    def chat_metadata(self, identity: str) -> ChatMetadata:
        """The chat template and token texts of the model `identity` names, read from the file's header
        once per model (the loaded file itself when it is that model). Blocking."""
        metadata = self._metadata.get(identity)
        if metadata is None:
            opened = self._opened
            path = opened.path if opened is not None and opened.identity == identity else self.source.header_path()
            metadata = self._metadata[identity] = read_chat_metadata(path)
        return metadata

    def known_chat_input(self, prompt: ChatPrompt, identity: str) -> ModelInput | None:
        """The model input for chat messages when the model's metadata is at hand; None otherwise."""
        metadata = self._metadata.get(identity)
        return None if metadata is None else self._render(prompt, metadata)

    def chat_input(self, prompt: ChatPrompt, identity: str) -> ModelInput:
        """Chat messages formatted by the model's own template, or the config template's prompt. Blocking."""
        return self._render(prompt, self.chat_metadata(identity))

    @staticmethod
    def _render(prompt: ChatPrompt, metadata: ChatMetadata) -> ModelInput:
        template = ChatTemplate.of(metadata)
        return template.render(prompt.messages) if template is not None else prompt.fallback

    def _prepare(self, llama: Any, model_input: ModelInput, params: SamplingParams) -> tuple[list[int], list[str]]:
        """The model's input as tokens, and the stop strings: the request's, then the input's own."""
        return tokenize(llama, model_input), list(model_input.stops_with(params.stop))


def tokenize(llama: Any, model_input: ModelInput) -> list[int]:
    """Template markup is parsed for control tokens; user text never is. Where the user's text holds no
    control-token text the two readings agree, and the whole text is tokenized at once, exactly as
    llama.cpp tokenizes it; otherwise each piece on its own."""

    def pieces(text: str, special: bool, add_bos: bool = False) -> list[int]:
        return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    plain = all(
        s.special or pieces(s.text, special=True) == pieces(s.text, special=False) for s in model_input.segments
    )
    if plain:
        return pieces(model_input.full_text, special=True, add_bos=model_input.add_bos)
    tokens = pieces("", special=False, add_bos=model_input.add_bos)  # the begin-of-sequence token the model wants
    return tokens + [token for s in model_input.segments for token in pieces(s.text, s.special)]
