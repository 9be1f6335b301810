"""The disk tier: diskcache in a folder that survives warm invocations (in a function: /tmp).

The disk is the one part of the cache that can fail under us: a read-only or full folder, a
damaged database. Any fault switches the tier off with a warning, the request goes on from
memory or the model, and the tier is tried again after `retry_seconds`. A database that
SQLite says is not a database is moved aside once and a fresh one started.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from handler.cache.entry import Entry, encode
from handler.cache.outage import Outage
from handler.cache.signing import EntrySigner, verified_entry
from handler.core.types import CacheSource

log = logging.getLogger(__name__)


class DiskTier:
    name = "disk"
    source = CacheSource.HIT_DISK
    blocking = True

    def __init__(
        self,
        directory: str,
        size_limit: int,
        ttl: float | None,
        retry_seconds: float,
        seed_directory: str | None = None,
        signer: EntrySigner | None = None,
    ) -> None:
        self.directory = directory
        self._signer = signer or EntrySigner(())
        self._seed_directory = seed_directory
        self._size_limit = size_limit
        self._ttl = ttl
        self._cache: Any = None
        self._database: tuple[int, int] | None = None  # the open database file's device and inode
        self._lock = threading.RLock()  # the open cache object: opened, failed (also while opening) and closed under it
        self._hits_lock = threading.Lock()
        self.outage = Outage("disk cache", "memory and the model", retry_seconds, log, {"cache_dir": directory})
        self.hits = 0

    def _open(self) -> Any:
        if self._cache is not None:
            if self._database is None or self._database_is_ours():
                return self._cache
            self._fail("check", FileNotFoundError(f"{self.directory}/cache.db was removed or replaced"))
        with self._lock:
            if self._cache is None and not self.outage.waiting():
                self._cache = self._connect_or_fault()
            return self._cache

    def _connect_or_fault(self) -> Any:
        """The open cache, or None after a fault; a damaged database is moved aside once and started afresh."""
        try:
            try:
                cache = self._connect()
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._quarantine(exc)
                cache = self._connect()
        except Exception as exc:
            self._fail("open", exc)
            return None
        self.outage.recovered()
        return cache

    def _connect(self) -> Any:
        import diskcache

        seed = self._seed_directory
        if seed and (Path(seed) / "cache.db").is_file() and not (Path(self.directory) / "cache.db").exists():
            shutil.copytree(seed, self.directory, dirs_exist_ok=True)
            log.info("disk cache seeded", extra={"cache_dir": self.directory, "seed_dir": seed})
        cache = diskcache.Cache(
            self.directory,
            size_limit=self._size_limit,
            # The write-ahead log counts against the disk too: checkpoint it often and truncate it after.
            sqlite_wal_autocheckpoint=max(16, self._size_limit // 4096 // 16),
            sqlite_journal_size_limit=max(64 * 1024, self._size_limit // 16),
        )
        stat = os.stat(Path(self.directory) / "cache.db")
        self._database = (stat.st_dev, stat.st_ino)
        return cache

    def _database_is_ours(self) -> bool:
        """A database deleted or replaced under us would take every later write with it, unseen."""
        try:
            stat = os.stat(Path(self.directory) / "cache.db")
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._database

    def _quarantine(self, exc: Exception) -> None:
        database = Path(self.directory) / "cache.db"
        aside = database.with_name(f"cache.db.corrupt-{int(time.time())}")
        log.warning(
            "disk cache database is damaged; moved aside, starting a fresh one",
            extra={"cache_dir": self.directory, "error": repr(exc), "moved_to": str(aside)},
        )
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(database) + suffix)
            if part.exists():
                os.replace(part, Path(str(aside) + suffix))

    def _fail(self, action: str, exc: BaseException) -> None:
        with self._lock:
            self.outage.fault(action, exc)
            cache, self._cache, self._database = self._cache, None, None
        if cache is not None:  # diskcache closes the calling thread's connection; other threads keep theirs
            try:
                cache.close()
            except Exception:
                pass

    def get(self, key: str) -> Entry | None:
        cache = self._open()
        if cache is None:
            return None
        try:
            raw = cache.get(key)
        except Exception as exc:
            self._fail("read", exc)
            return None
        if raw is None:
            return None
        entry = verified_entry(self._signer, key, raw, self.outage)
        if entry is None or entry.expired(self._ttl):
            self.delete(key)  # unsigned, stale schema, damaged or expired: never served, and not kept
            return None
        with self._hits_lock:
            self.hits += 1
        return entry

    def put(self, key: str, entry: Entry) -> None:
        cache = self._open()
        if cache is None:
            return
        expire = None if self._ttl is None else max(0.0, self._ttl - (time.time() - entry.created))
        try:
            cache.set(key, self._signer.seal(key, encode(key, entry)), expire=expire)
        except Exception as exc:
            self._fail("write", exc)

    def delete(self, key: str) -> None:
        cache = self._open()
        if cache is not None:
            try:
                cache.delete(key)
            except Exception as exc:
                self._fail("delete", exc)

    def stats(self) -> dict[str, Any]:
        cache = self._open()
        entries = size = None
        if cache is not None:
            try:
                entries, size = len(cache), cache.volume()
            except Exception as exc:
                self._fail("stat", exc)
        return {
            "enabled": True,
            "degraded": self.outage.degraded,
            "entries": entries,
            "bytes": size,
            "hits": self.hits,
            "faults": self.outage.faults,
        }

    def close(self) -> None:
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text
