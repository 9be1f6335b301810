"""Embeddings on the scheduler thread: a second llama.cpp context on the loaded model, embeddings on and
pooled, that decodes one input at a time as llama-cpp-python's `Llama.embed` decodes a text."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import llama_cpp
import numpy as np

from handler.engine.contract import DecodeError
from handler.engine.slots import EmbedRequest

POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


def pooling_for(setting: str, metadata: Mapping[str, str]) -> int:
    """The configured pooling; for `model`, the one the file declares, mean where it declares none (or
    none, or rank: neither gives one vector per input)."""
    if setting in POOLING:
        return POOLING[setting]
    architecture = metadata.get("general.architecture", "")
    try:
        declared = int(metadata.get(f"{architecture}.pooling_type", ""))
    except ValueError:
        declared = -1
    return declared if declared in POOLING.values() else llama_cpp.LLAMA_POOLING_TYPE_MEAN


class EmbeddingContext:
    """Made on the scheduler thread at the first embedding request, and used and freed only there."""

    def __init__(
        self, model: Any, size: int, threads: int, pooling: int, flash_attn: bool, n_embd: int, normalize: bool
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        # One input per decode, in one micro-batch: pooling reads the whole sequence at once.
        params.n_ctx = size
        params.n_batch = size
        params.n_ubatch = size
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = pooling
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise DecodeError(f"llama.cpp could not create an embedding context of {size} tokens")
        self._batch = llama_cpp.llama_batch_init(size, 0, 1)
        self._n_embd = n_embd
        self._normalize = normalize

    def embed(self, tokens: list[int]) -> tuple[float, ...]:
        """As llama-cpp-python's `Llama.embed` decodes one text: a cleared cache, every token an output."""
        batch = self._batch
        token: Any = batch.token
        pos: Any = batch.pos
        n_seq_id: Any = batch.n_seq_id
        seq_id: Any = batch.seq_id
        logits: Any = batch.logits
        for i, tok in enumerate(tokens):
            token[i] = tok
            pos[i] = i
            n_seq_id[i] = 1
            seq_id[i][0] = 0
            logits[i] = True
        batch.n_tokens = len(tokens)
        memory = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_clear(memory, True)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise DecodeError(f"llama_decode returned {rc} for an embedding")
        pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
        if not pointer:
            raise DecodeError("llama.cpp gave no pooled embedding")
        vector: list[float] = pointer[: self._n_embd]
        llama_cpp.llama_memory_clear(memory, True)
        if self._normalize:
            # llama-cpp-python's normalize_embedding, to the bit
            norm = float(np.linalg.norm(vector))
            if norm != 0.0:
                vector = [v / norm for v in vector]
        return tuple(vector)

    def free(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)


class EmbeddingQueue:
    """Embedding inputs waiting for the scheduler thread, served one per step (so a long list never stalls
    the generations for more than one input), on a context made for the first one: a service that
    never embeds pays nothing."""

    def __init__(self, make_context: Callable[[], EmbeddingContext]) -> None:
        self.waiting: deque[EmbedRequest] = deque()
        self.computed = 0
        self._make_context = make_context
        self._context: EmbeddingContext | None = None

    def serve_one(self) -> None:
        request = self.waiting.popleft()
        if not request.future.set_running_or_notify_cancel():
            return
        try:
            if self._context is None:
                self._context = self._make_context()
            vector = self._context.embed(request.tokens)
        except DecodeError as exc:
            request.future.set_exception(exc)
            return
        self.computed += 1
        request.future.set_result(vector)

    def free(self) -> None:
        if self._context is not None:
            self._context.free()
            self._context = None
