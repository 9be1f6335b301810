"""Cache keys: a strong hash over a canonical encoding of everything that decides an answer.

The model takes part through its identity (`handler.engine.model_source`), not its path.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from handler.cache.entry import SCHEMA_VERSION
from handler.core.types import SamplingParams


def cache_key(model: str, prompt: str, params: SamplingParams, n_ctx: int) -> str:
    """`prompt`: the model's whole input, as `ModelInput.key_material` writes it."""
    material: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "model": model,
        "n_ctx": n_ctx,
        "prompt": prompt,
        "params": vars(params),  # its fields are flat and immutable: no deep copy (asdict) needed
    }
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
