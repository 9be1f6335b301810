"""Memory, then disk, then (when configured) the fleet's shared table; a hit in a slower tier is
promoted to the faster ones. Stores go to every tier."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from handler.cache.disk import DiskTier
from handler.cache.entry import Entry
from handler.cache.memory import MemoryTier
from handler.cache.shared import SharedTier
from handler.config import Settings
from handler.model import Completion

HIT_MEMORY, HIT_DISK, HIT_SHARED, MISS = "HIT-MEMORY", "HIT-DISK", "HIT-SHARED", "MISS"


class ResponseCache:
    def __init__(self, settings: Settings) -> None:
        self.memory = MemoryTier(settings.cache_memory_entries, settings.cache_ttl_seconds)
        self.disk = (
            DiskTier(settings.cache_dir, settings.cache_disk_bytes, settings.cache_ttl_seconds,
                     settings.cache_disk_retry_seconds, settings.cache_seed_dir)
            if settings.cache_dir
            else None
        )
        self.shared = (
            SharedTier(settings.cache_table, settings.cache_table_ttl_seconds, settings.cache_table_timeout_seconds,
                       settings.cache_table_max_attempts, settings.cache_table_write_wait_seconds,
                       settings.cache_table_retry_seconds, settings.cache_ttl_seconds)
            if settings.cache_table
            else None
        )
        self.misses = 0

    def get_memory(self, key: str) -> Completion | None:
        """Cheap enough for the event loop: a dict lookup under a lock."""
        entry = self.memory.get(key)
        return entry.completion if entry else None

    def get_slow(self, key: str) -> tuple[Completion, str] | None:
        """Disk, then the shared table, with the tier that answered. Blocking: call from a worker thread."""
        entry = self.disk.get(key) if self.disk is not None else None
        if entry is not None:
            self.memory.put(key, entry)
            return entry.completion, HIT_DISK
        entry = self.shared.get(key) if self.shared is not None else None
        if entry is not None:
            self.memory.put(key, entry)
            if self.disk is not None:
                self.disk.put(key, entry)
            return entry.completion, HIT_SHARED
        return None

    def put(self, key: str, completion: Completion) -> None:
        """Blocking: call from a worker thread. Only finished answers come here."""
        # What it cost to make is this request's, not the answer's: a hit made nothing.
        stored = dataclasses.replace(completion, generation_seconds=0.0, load_seconds=None)
        entry = Entry(stored, time.time())
        self.memory.put(key, entry)
        if self.disk is not None:
            self.disk.put(key, entry)
        if self.shared is not None:
            self.shared.put(key, entry)

    def stats(self) -> dict[str, Any]:
        """Blocking when there is a disk tier (it counts entries in SQLite)."""
        return {
            "memory": {"enabled": self.memory.enabled, "entries": len(self.memory), "hits": self.memory.hits},
            "disk": self.disk.stats() if self.disk else {"enabled": False},
            "shared": self.shared.stats() if self.shared else {"enabled": False},
            "misses": self.misses,
        }
