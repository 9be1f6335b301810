"""The one object that owns the loaded model: lazy load, reload when its file is replaced, and
generation through the engine (`handler.engine.scheduler`), which decodes concurrent requests
together on a thread of its own.

Loads are serialized: requests that arrive together before the model is loaded wait, the first
loads it, the rest find it loaded. A failed load leaves nothing behind, so the next request tries
again instead of the container staying broken. Importing this module does not import llama.cpp:
a cold start pays for it only when a request needs the model.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from handler.core.errors import BadRequest, ContextOverflow, GenerationFailed, InputTooLong, ModelUnavailable
from handler.core.settings import Settings
from handler.core.types import (
    Completion,
    Embedding,
    EmbeddingInput,
    FinishReason,
    Lora,
    ModelInput,
    SamplingParams,
)
from handler.engine.contract import (
    Engine,
    EngineError,
    EngineLoadError,
    EngineSettings,
    Generated,
    InvalidRequest,
)
from handler.engine.leases import Leases
from handler.engine.model_files.identity import DigestMemo
from handler.engine.model_files.source import LocalSource, ModelSource, OpenedModel, S3Source, model_source

log = logging.getLogger(__name__)

Loader = Callable[[EngineSettings], Engine]


def load_engine(settings: EngineSettings) -> Engine:
    """The batching scheduler, imported here so that importing the service stays cheap."""
    from handler.engine.scheduler import Scheduler

    return Scheduler.load(settings)


def adapter_source(settings: Settings, name: str) -> ModelSource:
    """A LoRA adapter's file, found, fetched and identified as the model's is (its sha256)."""
    path, sha256 = settings.lora_adapters[name], settings.lora_adapters_sha256.get(name)
    if path.startswith("s3://"):
        return S3Source(path, sha256, settings.model_download_dir)
    return LocalSource(path, sha256, DigestMemo(Path(settings.model_download_dir) / "digests"))


def engine_settings(settings: Settings, model_path: str) -> EngineSettings:
    return EngineSettings(
        model_path=model_path,
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_parallel=settings.n_parallel,
        n_threads=settings.n_threads or 0,
        n_gpu_layers=settings.n_gpu_layers,
        use_mmap=settings.use_mmap,
        cache_prompt=settings.reuse_prompt_prefix,
        flash_attn=settings.flash_attn,
        embedding_pooling=settings.embedding_pooling,
        embedding_normalize=settings.embedding_normalize,
        draft_max=settings.speculative_draft_max,
        draft_ngram=settings.speculative_ngram,
        draft_max_sequences=settings.speculative_max_sequences,
    )


class ModelHolder:
    """Owns the model of one container; `generate` blocks its caller (a worker thread) while the
    engine's own thread does the work."""

    def __init__(self, settings: Settings, loader: Loader = load_engine, source: ModelSource | None = None) -> None:
        self.settings = settings
        self.source = source or model_source(settings)
        self._loader = loader
        self._lock = threading.Lock()  # loads and swaps
        self._leases = Leases()  # callers using each engine: a replaced one is freed after the last
        self._engine: Engine | None = None
        self._opened: OpenedModel | None = None
        self.adapter_sources = {name: adapter_source(settings, name) for name in settings.lora_adapters}
        self._adapters: dict[str, OpenedModel] = {}  # opened on first use, held for the container's life
        self._adapters_lock = threading.Lock()
        self.load_seconds: float | None = None
        self.generations = 0

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def identity(self) -> str | None:
        """The loaded model's identity; None before it is loaded."""
        opened = self._opened
        return opened.identity if opened is not None else None

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def opened(self) -> OpenedModel | None:
        """The file the loaded engine runs; None before it is loaded."""
        return self._opened

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

    # ---- loading -------------------------------------------------------------------------------

    @contextmanager
    def _use(self) -> Iterator[tuple[Engine, OpenedModel, float | None]]:
        """The engine, held for the caller until it has its answer: a reload meanwhile retires the old
        engine only once its last caller is done with it."""
        engine, opened, loaded_now = self._ensure_loaded()
        try:
            yield engine, opened, loaded_now
        finally:
            self._leases.release(engine)

    def _ensure_loaded(self) -> tuple[Engine, OpenedModel, float | None]:
        """The engine (leased to the caller, who releases it), the file it was loaded from, and the load
        time if this call loaded it.

        A model whose file has been replaced at its path (renamed over, rewritten) is a new model: it
        is loaded in place of the old one, which finishes what it is generating and is then freed, and
        keeps answering (under its own identity) if the new one cannot be loaded."""
        with self._lock:
            loaded_now = None
            if self._engine is None:
                loaded_now = self._load()
            elif self._opened is not None and self.source.replaced(self._opened):
                log.warning("model file replaced; loading the new one", extra={"model_path": self.settings.model_path})
                try:
                    loaded_now = self._load()
                except ModelUnavailable as exc:
                    log.error(
                        "the replacement cannot be loaded; the loaded model keeps answering",
                        extra={"model_path": self.settings.model_path, "error": exc.cause},
                    )
            assert self._engine is not None and self._opened is not None
            self._leases.take(self._engine)
            return self._engine, self._opened, loaded_now

    def _load(self) -> float:
        started = time.perf_counter()
        opened = self.source.open()
        try:
            engine = self._loader(engine_settings(self.settings, opened.path))
        except Exception as exc:  # an unexpected loader fault is still "unavailable", never fatal
            opened.release()
            if isinstance(exc, ModelUnavailable):
                raise
            cause = str(exc) if isinstance(exc, EngineLoadError) else repr(exc)
            raise ModelUnavailable(f"loading {self.settings.model_path} failed: {cause}") from exc
        old_engine, old_opened = self._engine, self._opened
        self._engine, self._opened = engine, opened
        if old_engine is not None:
            self._leases.retire(old_engine, old_opened)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            extra={"model_path": self.settings.model_path, "load_s": self.load_seconds, "model": opened.identity},
        )
        return self.load_seconds

    def close(self) -> None:
        with self._lock:
            engine, opened = self._engine, self._opened
            self._engine = self._opened = None
        if engine is not None:
            engine.close()
        if opened is not None:
            opened.release()
        with self._adapters_lock:
            adapters, self._adapters = self._adapters, {}
        for adapter in adapters.values():
            adapter.release()

    # ---- LoRA adapters -------------------------------------------------------------------------

    def known_adapter_identity(self, name: str) -> str | None:
        """An adapter's identity when known without blocking."""
        opened = self._adapters.get(name)
        return opened.identity if opened is not None else self.adapter_sources[name].known_identity()

    def adapter_identity(self, name: str) -> str:
        """An adapter's identity, for cache keys: the file opened for it once it has been; blocking."""
        opened = self._adapters.get(name)
        return opened.identity if opened is not None else self.adapter_sources[name].identity()

    def _adapter(self, name: str) -> OpenedModel:
        """The adapter's file, fetched, checked and held open; the engine loads it on first use.
        Raises ModelUnavailable (ModelMismatch for a file that is not the declared sha256)."""
        with self._adapters_lock:
            opened = self._adapters.get(name)
            if opened is None:
                opened = self.adapter_sources[name].open()
                self._adapters[name] = opened
            return opened

    # ---- generating ----------------------------------------------------------------------------

    def generate(
        self,
        model_input: ModelInput,
        params: SamplingParams,
        deadline: float | None = None,
        *,
        cancelled: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        lora: Lora | None = None,
    ) -> Completion:
        """Generate one answer, stopping at `deadline` (time.monotonic()) with finish_reason time_limit,
        or once `cancelled` is set. `params` are the generation's whole, stop strings included: the input's
        own stops join them in `model_input.with_stops`, once, for the cache key too. With `on_text`, the text
        is streamed to it piece by piece (from the engine's thread); with `lora`, under that adapter.
        Blocking: call from a worker thread; other requests decode alongside.

        Raises ModelUnavailable, ContextOverflow or GenerationFailed.
        """
        texts = None if on_text is None else (lambda _index, text: on_text(text))
        return self.generate_choices(model_input, (params,), deadline, cancelled=cancelled, on_text=texts, lora=lora)[0]

    def generate_choices(
        self,
        model_input: ModelInput,
        choices: tuple[SamplingParams, ...],
        deadline: float | None = None,
        *,
        cancelled: threading.Event | None = None,
        on_text: Callable[[int, str], None] | None = None,
        lora: Lora | None = None,
    ) -> tuple[Completion, ...]:
        """As `generate`, one answer for each of `choices` (the same but for their seeds), from one prompt
        decoded once: the first choice is submitted alone, and the others once its prompt's KV cells are in,
        which the engine then copies to them (prefix reuse). `on_text` gets each piece with its choice's
        index. Raises as `generate`, once every choice has ended."""
        adapter = self._adapter(lora.name) if lora is not None else None
        with self._use() as (engine, opened, load_seconds):
            return self._generate(
                engine, opened, load_seconds, model_input, choices, deadline, cancelled, on_text, lora, adapter
            )

    def _generate(
        self,
        engine: Engine,
        opened: OpenedModel,
        load_seconds: float | None,
        model_input: ModelInput,
        choices: tuple[SamplingParams, ...],
        deadline: float | None,
        cancelled: threading.Event | None,
        on_text: Callable[[int, str], None] | None,
        lora: Lora | None,
        adapter: OpenedModel | None,
    ) -> tuple[Completion, ...]:
        tokens = tokenize(engine, model_input)
        max_tokens = choices[0].max_tokens
        if len(tokens) + max_tokens > engine.n_ctx:
            raise ContextOverflow(len(tokens), max_tokens, engine.n_ctx)
        if cancelled is not None and cancelled.is_set():  # gone while waiting for the model
            gone = Completion("", FinishReason.CANCELLED, len(tokens), 0, model_identity=opened.identity)
            return (gone,) * len(choices)
        extra: dict[str, Any] = {} if adapter is None or lora is None else {"lora": (adapter.path, lora.scale)}
        try:
            futures = submit_choices(
                engine,
                tokens,
                choices,
                on_text,
                share_prompt=self.settings.reuse_prompt_prefix,
                deadline=deadline,
                cancelled=cancelled,
                **extra,
            )
            generated = results(futures)
        except InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        except EngineLoadError as exc:
            raise ModelUnavailable(f"LoRA adapter {lora.name if lora else ''} failed to load: {exc}") from exc
        except (EngineError, ValueError, RuntimeError, OSError) as exc:
            raise GenerationFailed(f"llama.cpp generation failed: {exc!r}") from exc
        self.generations += len(generated)
        return tuple(
            Completion(
                text=one.text,
                finish_reason=one.finish_reason,
                prompt_tokens=one.prompt_tokens,
                completion_tokens=one.completion_tokens,
                generation_seconds=one.generation_seconds,
                load_seconds=load_seconds,
                model_identity=opened.identity,
                logprobs=one.logprobs,
                stop=one.stop,
                adapter_identity=None if adapter is None else adapter.identity,
            )
            for one in generated
        )

    # ---- embeddings ----------------------------------------------------------------------------

    def embed(self, inputs: list[EmbeddingInput]) -> list[Embedding]:
        """Each input's vector, in order, computed on the engine's thread. A text is tokenized as
        llama-cpp-python's `Llama.embed` tokenizes it (with the begin-of-sequence token, control-token text
        read as text); token ids are embedded as they are, nothing added. Blocking: call from a worker thread.

        Raises ModelUnavailable, BadRequest (a token id outside the vocabulary), InputTooLong (the first
        input over the embedding context) or GenerationFailed.
        """
        with self._use() as (engine, opened, _):
            return self._embed(engine, opened, inputs)

    def _embed(self, engine: Engine, opened: OpenedModel, given: list[EmbeddingInput]) -> list[Embedding]:
        inputs = [
            known_tokens(engine, item, index)
            if isinstance(item, tuple)
            else engine.tokenize(item, add_bos=True, special=False)
            for index, item in enumerate(given)
        ]
        limit = engine.embedding_n_ctx
        for index, tokens in enumerate(inputs):
            if len(tokens) > limit:
                raise InputTooLong(index, len(tokens), limit)
        try:
            futures = [engine.embed(tokens) for tokens in inputs]
            vectors = [future.result() for future in futures]
        except (EngineError, ValueError, RuntimeError, OSError) as exc:
            raise GenerationFailed(f"llama.cpp embedding failed: {exc!r}") from exc
        return [
            Embedding(vector, len(tokens), model_identity=opened.identity)
            for vector, tokens in zip(vectors, inputs, strict=True)
        ]

    # ---- the vocabulary ------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """`text` as the loaded model tokenizes it (llama-server's /tokenize). Blocking: loads the model."""
        with self._use() as (engine, _, _):
            return engine.tokenize(text, add_bos=add_special, special=parse_special)

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes, control tokens as their text. Blocking: loads the model.
        Raises BadRequest (param `tokens`) for an id outside the vocabulary."""
        with self._use() as (engine, _, _):
            try:
                return [engine.token_piece(token) for token in tokens]
            except InvalidRequest as exc:
                raise BadRequest(str(exc), param=exc.param) from None


def known_tokens(engine: Engine, tokens: tuple[int, ...], index: int) -> list[int]:
    """Token ids sent as embedding input `index`, each checked against the vocabulary (llama.cpp would
    abort on one outside it). Raises BadRequest naming `input`."""
    for token in dict.fromkeys(tokens):
        try:
            engine.token_piece(token)
        except InvalidRequest as exc:
            raise BadRequest(
                f"Input {index}: {exc} Token ids must be this model's own (POST /tokenize gives them); a client "
                "that tokenizes for OpenAI's models (LangChain's OpenAIEmbeddings does, unless "
                "check_embedding_ctx_length=False) should send the text instead.",
                param="input",
            ) from None
    return list(tokens)


def tokenize(engine: Engine, model_input: ModelInput) -> list[int]:
    """Template markup is parsed for control tokens; user text never is. Where the user's text holds no
    control-token text the two readings agree, and the whole text is tokenized at once, exactly as
    llama.cpp tokenizes it; otherwise each piece on its own."""

    def pieces(text: str, special: bool, add_bos: bool = False) -> list[int]:
        return engine.tokenize(text, add_bos=add_bos, special=special)

    plain = all(
        s.special or pieces(s.text, special=True) == pieces(s.text, special=False) for s in model_input.segments
    )
    if plain:
        return pieces(model_input.full_text, special=True, add_bos=model_input.add_bos)
    tokens = pieces("", special=False, add_bos=model_input.add_bos)  # the begin-of-sequence token the model wants
    return tokens + [token for s in model_input.segments for token in pieces(s.text, s.special)]


def submit_choices(
    engine: Engine,
    tokens: list[int],
    choices: tuple[SamplingParams, ...],
    on_text: Callable[[int, str], None] | None,
    *,
    share_prompt: bool,
    **kwargs: Any,
) -> list[Future[Generated]]:
    """One generation per choice, in order. With `share_prompt` (prefix reuse on) and several choices, the
    first goes alone, and the others once its prompt's cells are in the KV cache (or it has ended): the
    engine then copies those cells to each of them (`SlotTable.place`) instead of decoding the prompt again.
    Submitted together, they would be admitted in one step and each would decode the whole prompt."""

    def texts(index: int) -> Callable[[str], None] | None:
        return None if on_text is None else functools.partial(on_text, index)

    decoded = threading.Event() if share_prompt and len(choices) > 1 else None
    first = engine.submit(tokens, choices[0], on_text=texts(0), prompt_decoded=decoded, **kwargs)
    if decoded is not None:
        first.add_done_callback(lambda _: decoded.set())  # ended before: failed, cancelled or out of time
        decoded.wait()
    rest = [engine.submit(tokens, params, on_text=texts(i), **kwargs) for i, params in enumerate(choices[1:], 1)]
    return [first, *rest]


def results(futures: list[Future[Generated]]) -> list[Generated]:
    """Every future's result, once all have ended (none left running unseen); the first failure raised."""
    wait(futures)
    return [future.result() for future in futures]
