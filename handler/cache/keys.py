"""Cache keys: a strong hash over a canonical encoding of everything that decides an answer.

The model takes part through its identity, not its path: the configured sha256 when there is
one (so a cold container reads nothing of the file), else a fingerprint of the file's size and
three 1 MiB samples. The file size joins either way, so a model swapped under a stale
`model_sha256` still misses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any

from handler.cache.entry import SCHEMA_VERSION
from handler.model import SamplingParams

SAMPLE = 1024 * 1024


def model_identity(model_path: str, declared_sha256: str | None = None) -> str:
    """Who the model is, cheaply: a stat, and three 1 MiB reads unless the sha256 is declared."""
    size = os.stat(model_path).st_size
    if declared_sha256:
        return f"sha256:{declared_sha256}:size:{size}"
    digest = hashlib.sha256(str(size).encode())
    with open(model_path, "rb") as f:
        for offset in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
            f.seek(offset)
            digest.update(f.read(SAMPLE))
    return f"sample:{digest.hexdigest()}:size:{size}"


def cache_key(kind: str, model: str, prompt: str, params: SamplingParams, n_ctx: int) -> str:
    """`kind` separates answer shapes (the /chat text is stripped, a raw completion is not)."""
    material: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "model": model,
        "n_ctx": n_ctx,
        "prompt": prompt,
        "params": asdict(params),
    }
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
