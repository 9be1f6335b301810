"""Cache keys: a strong hash over a canonical encoding of everything that decides an answer.

The model takes part through its identity (`handler.engine.model_files.source`), not its path.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from handler.cache.entry import EMBEDDING_KIND, EMBEDDING_SCHEMA_VERSION, SCHEMA_VERSION
from handler.core.types import EmbeddingInput, SamplingParams


def cache_key(
    model: str,
    prompt: str,
    params: SamplingParams,
    n_ctx: int,
    lora: tuple[str, float] | None = None,
    seeds: tuple[int, ...] = (),
) -> str:
    """`prompt`: the model's whole input, as `ModelInput.key_material` writes it. `lora`: the identity of
    the LoRA adapter applied and its scale; absent for the model alone, whose keys stay as they were.
    `seeds`: for a request for several choices, each choice's seed (how many, and how each is drawn);
    empty for one answer, whose keys stay as they were."""
    material: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "model": model,
        "n_ctx": n_ctx,
        "prompt": prompt,
        "params": vars(params),  # its fields are flat and immutable: no deep copy (asdict) needed
    }
    if lora is not None:
        material["lora"] = {"identity": lora[0], "scale": lora[1]}
    if seeds:
        material["choices"] = {"n": len(seeds), "seeds": list(seeds)}
    return _digest(material)


def embedding_key(model: str, given: EmbeddingInput, pooling: str, normalize: bool) -> str:
    """One input's vector: the model, the input, and how token vectors become one (the configured pooling,
    which with the model's identity fixes the pooling used, and the normalization). A text is keyed under
    `input`, token ids under `tokens`: the two never share a key (a text's keys are as they always were)."""
    material: dict[str, Any] = {
        "kind": EMBEDDING_KIND,
        "schema": EMBEDDING_SCHEMA_VERSION,
        "model": model,
        "pooling": pooling,
        "normalize": normalize,
    }
    if isinstance(given, str):
        material["input"] = given
    else:
        material["tokens"] = list(given)
    return _digest(material)


def _digest(material: dict[str, Any]) -> str:
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
