"""The tiers in order, fastest first: a hit in a slower tier is promoted to the faster ones, and
every store goes to every tier."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, TypeVar

from handler.cache.disk import DiskTier
from handler.cache.entry import Entry
from handler.cache.memory import MemoryTier
from handler.cache.shared import SharedTier
from handler.cache.signing import EntrySigner
from handler.cache.tier import Tier
from handler.core.settings import Settings
from handler.core.types import CacheSource, Choices, Completion, Embedding

V = TypeVar("V", Completion, Choices, Embedding)
log = logging.getLogger(__name__)


def configured_tiers(settings: Settings) -> list[Tier]:
    """Memory, then disk, then (when configured) the fleet's shared table; the slow tiers' entries signed."""
    signer = EntrySigner(settings.cache_signing_keys)
    tiers: list[Tier] = [MemoryTier(settings.cache_memory_entries, settings.cache_ttl_seconds)]
    if settings.cache_dir:
        tiers.append(
            DiskTier(
                settings.cache_dir,
                settings.cache_disk_bytes,
                settings.cache_ttl_seconds,
                settings.cache_disk_retry_seconds,
                settings.cache_seed_dir,
                signer,
            )
        )
    if settings.cache_table:
        tiers.append(
            SharedTier(
                settings.cache_table,
                settings.cache_table_ttl_seconds,
                settings.cache_table_timeout_seconds,
                settings.cache_table_max_attempts,
                settings.cache_table_write_wait_seconds,
                settings.cache_table_retry_seconds,
                settings.cache_ttl_seconds,
                signer,
            )
        )
        if not signer.enabled:
            log.warning(
                "cache_table is set without cache_signing_keys: answers in the table are served as written, "
                "so anyone who can put items into it (every function role with PutItem) can make this service "
                "answer with their text; set cache_signing_keys (or CHAT_CACHE_SIGNING_KEYS) on every container"
            )
    return tiers


class ResponseCache:
    def __init__(self, tiers: list[Tier]) -> None:
        self.tiers = tiers
        self._misses = 0
        self._misses_lock = threading.Lock()  # counted from whichever thread the service answers on

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseCache:
        return cls(configured_tiers(settings))

    def count_miss(self, n: int = 1) -> None:
        """`n` lookups the cache could not answer."""
        with self._misses_lock:
            self._misses += n

    @property
    def misses(self) -> int:
        return self._misses

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def get_fast(self, key: str) -> tuple[Completion, CacheSource] | None:
        """The leading tiers that are cheap enough to read on the event loop."""
        return self._walk(key, blocking=False, kind=Completion)

    def get_slow(self, key: str) -> tuple[Completion, CacheSource] | None:
        """The blocking tiers. Call from a worker thread."""
        return self._walk(key, blocking=True, kind=Completion)

    def get_choices_fast(self, key: str) -> tuple[Choices, CacheSource] | None:
        """An answer of several choices, from the tiers cheap enough to read on the event loop."""
        return self._walk(key, blocking=False, kind=Choices)

    def get_choices_slow(self, key: str) -> tuple[Choices, CacheSource] | None:
        """Blocking: call from a worker thread."""
        return self._walk(key, blocking=True, kind=Choices)

    def get_embedding_fast(self, key: str) -> tuple[Embedding, CacheSource] | None:
        return self._walk(key, blocking=False, kind=Embedding)

    def get_embedding_slow(self, key: str) -> tuple[Embedding, CacheSource] | None:
        """Blocking: call from a worker thread."""
        return self._walk(key, blocking=True, kind=Embedding)

    def _walk(self, key: str, blocking: bool, kind: type[V]) -> tuple[V, CacheSource] | None:
        for index, tier in enumerate(self.tiers):
            if tier.blocking != blocking:
                continue
            entry = tier.get(key)
            if entry is not None and isinstance(entry.value, kind):
                for faster in self.tiers[:index]:
                    faster.put(key, entry)
                return entry.value, tier.source
        return None

    def put(self, key: str, answer: Completion | Choices) -> None:
        """Blocking: call from a worker thread. Only finished answers come here (every choice whole)."""

        # What it cost to make is this request's, not the answer's: a hit made nothing.
        def bare(completion: Completion) -> Completion:
            return dataclasses.replace(completion, generation_seconds=0.0, load_seconds=None)

        stored = Choices(tuple(map(bare, answer.completions))) if isinstance(answer, Choices) else bare(answer)
        self._put(key, Entry(stored, time.time()))

    def put_embedding(self, key: str, embedding: Embedding) -> None:
        """Blocking: call from a worker thread."""
        self._put(key, Entry(dataclasses.replace(embedding, model_identity=None), time.time()))

    def _put(self, key: str, entry: Entry) -> None:
        for tier in self.tiers:
            tier.put(key, entry)

    @property
    def faults(self) -> int:
        return sum(tier.outage.faults for tier in self.tiers if tier.outage is not None)

    def stats(self) -> dict[str, Any]:
        """Blocking when a tier must count (the disk counts entries in SQLite)."""
        return {**{tier.name: tier.stats() for tier in self.tiers}, "misses": self.misses}

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
