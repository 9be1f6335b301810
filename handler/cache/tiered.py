"""Memory first, then disk; a disk hit is promoted to memory. Stores go to both."""

from __future__ import annotations

import time
from typing import Any

from handler.cache.disk import DiskTier
from handler.cache.entry import Entry
from handler.cache.memory import MemoryTier
from handler.config import Settings
from handler.model import Completion

HIT_MEMORY, HIT_DISK, MISS = "HIT-MEMORY", "HIT-DISK", "MISS"


class ResponseCache:
    def __init__(self, settings: Settings) -> None:
        self.memory = MemoryTier(settings.cache_memory_entries, settings.cache_ttl_seconds)
        self.disk = (
            DiskTier(settings.cache_dir, settings.cache_disk_bytes, settings.cache_ttl_seconds,
                     settings.cache_disk_retry_seconds, settings.cache_seed_dir)
            if settings.cache_dir
            else None
        )
        self.misses = 0

    def get_memory(self, key: str) -> Completion | None:
        """Cheap enough for the event loop: a dict lookup under a lock."""
        entry = self.memory.get(key)
        return entry.completion if entry else None

    def get_disk(self, key: str) -> Completion | None:
        """Blocking (SQLite): call from a worker thread."""
        if self.disk is None:
            return None
        entry = self.disk.get(key)
        if entry is None:
            return None
        self.memory.put(key, entry)
        return entry.completion

    def put(self, key: str, completion: Completion) -> None:
        """Blocking: call from a worker thread. Only finished answers come here."""
        entry = Entry(completion, time.time())
        self.memory.put(key, entry)
        if self.disk is not None:
            self.disk.put(key, entry)

    def stats(self) -> dict[str, Any]:
        """Blocking when there is a disk tier (it counts entries in SQLite)."""
        return {
            "memory": {"enabled": self.memory.enabled, "entries": len(self.memory), "hits": self.memory.hits},
            "disk": self.disk.stats() if self.disk else {"enabled": False},
            "misses": self.misses,
        }
