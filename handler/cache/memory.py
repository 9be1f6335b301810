"""The in-memory tier: an LRU of decoded entries, per container, guarded for worker threads."""

from __future__ import annotations

import threading
from typing import Any

from cachetools import LRUCache

from handler.cache.entry import Entry
from handler.core.types import CacheSource


class MemoryTier:
    name = "memory"
    source = CacheSource.HIT_MEMORY
    blocking = False  # a dict lookup under a lock: cheap enough for the event loop
    outage = None  # it cannot fail

    def __init__(self, max_entries: int, ttl: float | None) -> None:
        self._entries: LRUCache[str, Entry] | None = LRUCache(max_entries) if max_entries > 0 else None
        self._ttl = ttl
        self._lock = threading.Lock()  # cachetools is not thread-safe; stores come from worker threads
        self.hits = 0

    def get(self, key: str) -> Entry | None:
        if self._entries is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expired(self._ttl):
                del self._entries[key]
                return None
            self.hits += 1
            return entry

    def put(self, key: str, entry: Entry) -> None:
        if self._entries is not None:
            with self._lock:
                self._entries[key] = entry

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"enabled": self._entries is not None, "entries": len(self), "hits": self.hits}

    def close(self) -> None:
        pass
