"""What every cache tier does, so the response cache walks a list of them and a new tier is one class."""

from __future__ import annotations

from typing import Any, Protocol

from handler.cache.entry import Entry
from handler.cache.outage import Outage
from handler.core.types import CacheSource


class Tier(Protocol):
    name: str  # in /health, metrics and logs
    source: CacheSource  # what a hit here is called
    blocking: bool  # False only where a read is cheap enough for the event loop
    hits: int

    @property
    def outage(self) -> Outage | None:
        """The tier's fault state; None for a tier that cannot fail."""

    def get(self, key: str) -> Entry | None:
        """The entry, or None: a miss, and also any fault (which the tier logs and steps aside for)."""

    def put(self, key: str, entry: Entry) -> None:
        """Store; a fault is the tier's own, never the caller's."""

    def stats(self) -> dict[str, Any]:
        """Blocking for a tier that must count what it holds."""

    def close(self) -> None:
        """Release files, connections and threads at shutdown."""
