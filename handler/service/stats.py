"""One snapshot of what the service holds now, for `/health` and `/metrics` alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handler.engine.contract import EngineStats


@dataclass(frozen=True)
class ModelState:
    file: str  # the model file's name, not its path
    loaded: bool
    available: bool | None  # loaded, or its file there to load; None: an s3:// model not fetched yet
    load_seconds: float | None
    generations: int


@dataclass(frozen=True)
class ServiceStats:
    model: ModelState
    engine: EngineStats | None  # None before the model is loaded
    pending: int  # distinct generations queued or running, streams included
    cache: dict[str, Any]  # each tier's figures by its name, and `misses`

    @property
    def degraded(self) -> bool:
        """The model file is missing, or a cache tier is failing."""
        tiers = (figures for figures in self.cache.values() if isinstance(figures, dict))
        return self.model.available is False or any(figures.get("degraded") for figures in tiers)

    def tiers(self) -> dict[str, dict[str, Any]]:
        return {name: figures for name, figures in self.cache.items() if isinstance(figures, dict)}
