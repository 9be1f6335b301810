"""llama-cpp-python's own answers on the same model file: what the service's answers are compared with.

Each builds its `llama_cpp.Llama` afresh (no state carried from one reference to the next) and closes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_cpp import Llama

from handler.core.settings import Settings
from tests.tiny_gguf import CONTEXT


def reference_vocab(model: Path | str) -> Llama:
    """The model's tokenizer alone (no weights loaded): llama.cpp's own tokens for a text."""
    return Llama(model_path=str(model), vocab_only=True, verbose=False)


def reference_completion(settings: Settings, **call: Any) -> dict[str, Any]:
    """The request straight from llama-cpp-python on the settings' model, with the service's sampling
    defaults: `create_chat_completion` where `call` has messages, else `create_completion`."""
    llama = Llama(model_path=settings.model_path, n_ctx=settings.n_ctx, n_gpu_layers=0, seed=0, verbose=False)
    sampling = dict(
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        min_p=settings.min_p,
        repeat_penalty=settings.repeat_penalty,
        seed=settings.seed,
    )
    try:
        out: dict[str, Any]
        if "messages" in call:
            out = llama.create_chat_completion(**sampling, **call)
        else:
            out = llama.create_completion(**sampling, **call)
        return out
    finally:
        llama.close()


def greedy_reference(
    model: Path | str, prompt: str | list[int], max_tokens: int, lora: Path | None = None, scale: float = 1.0
) -> dict[str, Any]:
    """llama-cpp-python's own greedy answer in the tiny model's context size, with the LoRA adapter when given."""
    extra: dict[str, Any] = {} if lora is None else {"lora_path": str(lora), "lora_scale": scale}
    llama = Llama(model_path=str(model), n_ctx=CONTEXT, n_threads=1, seed=0, verbose=False, **extra)
    try:
        out: dict[str, Any] = llama.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        return out
    finally:
        llama.close()


def reference_embedding(model: Path | str, text: str, *, normalize: bool = False, **kwargs: Any) -> list[float]:
    """llama-cpp-python's own vector for `text` (`Llama(embedding=True, **kwargs).embed`: kwargs such as
    `pooling_type`), not normalized unless asked, as `embed` leaves it by default."""
    llama = Llama(model_path=str(model), embedding=True, n_threads=1, verbose=False, **kwargs)
    try:
        vector: list[float] = llama.embed(text, normalize=normalize)
        return vector
    finally:
        llama.close()
