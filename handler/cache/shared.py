"""The shared tier: a DynamoDB table that every container of a fleet reads and writes.

Behind memory and disk, so a container that has never seen a prompt still answers it when any
other container has. It is a helper, never a dependency: every call has a short timeout and
botocore's own bounded retries, and any fault (throttled, slow, missing table, no network)
switches the tier off with a warning for `retry_seconds` while the request goes on from the
local tiers and the model. Items carry the same versioned entry as the disk tier, under the
same key, and a TTL attribute so the table expires them itself.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from handler.cache.entry import Entry, encode
from handler.cache.outage import Outage
from handler.cache.signing import EntrySigner, verified_entry
from handler.core.types import CacheSource

log = logging.getLogger(__name__)

ITEM_LIMIT = 400 * 1024  # DynamoDB's item size limit: attribute names and values together
KEY, ENTRY, EXPIRES = "key", "entry", "expires_at"


class SharedTier:
    name = "shared"
    source = CacheSource.HIT_SHARED
    blocking = True

    def __init__(
        self,
        table: str,
        ttl: float,
        timeout: float,
        max_attempts: int,
        write_wait: float,
        retry_seconds: float,
        local_ttl: float | None = None,
        signer: EntrySigner | None = None,
    ) -> None:
        self.table = table
        self._signer = signer or EntrySigner(())
        self._local_ttl = local_ttl  # cache_ttl_seconds: an older entry is never served, wherever it is
        self._ttl = min(ttl, local_ttl) if local_ttl else ttl  # how long the table keeps an item (its TTL attribute)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._write_wait = write_wait
        self._client: Any = None
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shared-cache-write")
        self.outage = Outage("shared cache", "the local tiers and the model", retry_seconds, log, {"table": table})
        self.hits = 0
        self.writes = 0
        self.skipped_oversize = 0

    def _connect(self) -> Any:
        """boto3 is imported here, on first use: a service without the tier never imports it."""
        with self._lock:
            if self.outage.waiting():
                return None
            if self._client is None:
                try:  # no region, no credentials config, no boto3: a fault of the tier, never of the request
                    self._client = self._make_client()
                except Exception as exc:
                    self.outage.fault("connect", exc)
                    return None
            return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "dynamodb",
            config=Config(
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
                retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            ),
        )

    def get(self, key: str) -> Entry | None:
        """Blocking: one GetItem, bounded by the timeout and the retry config."""
        client = self._connect()
        if client is None:
            return None
        try:
            item = client.get_item(TableName=self.table, Key={KEY: {"S": key}}).get("Item")
        except Exception as exc:
            self.outage.fault("read", exc)
            return None
        self.outage.recovered()
        if not item:
            return None
        raw = item.get(ENTRY, {}).get("B")
        expires = item.get(EXPIRES, {}).get("N")
        entry = verified_entry(self._signer, key, raw, self.outage)
        # DynamoDB deletes expired items lazily (within days): the attribute is checked here too.
        if entry is None or expires is None or float(expires) <= time.time() or entry.expired(self._local_ttl):
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Written on a thread of its own; the caller waits at most `write_wait` seconds for it. In a
        function the container may be frozen after the response, so a short wait makes the write
        land now in the common case, without ever making an answer wait on a slow table."""
        raw = self._signer.seal(key, encode(key, entry))
        size = len(KEY) + len(key) + len(ENTRY) + len(raw) + len(EXPIRES) + 21  # a number takes up to 21 bytes
        if size > ITEM_LIMIT:
            self.skipped_oversize += 1
            log.info(
                "answer too large for the shared cache; kept locally only",
                extra={"table": self.table, "item_bytes": size, "limit_bytes": ITEM_LIMIT},
            )
            return
        future = self._writer.submit(self._write, key, raw, entry.created)
        try:
            future.result(timeout=self._write_wait)
        except FutureTimeout:
            pass  # still on its way; its own timeout and retries bound it

    def _write(self, key: str, raw: bytes, created: float) -> None:
        client = self._connect()
        if client is None:
            return
        expires = int(created + self._ttl)
        try:
            client.put_item(
                TableName=self.table,
                Item={
                    KEY: {"S": key},
                    ENTRY: {"B": raw},
                    EXPIRES: {"N": str(expires)},
                },
            )
        except Exception as exc:
            self.outage.fault("write", exc)
            return
        self.outage.recovered()
        self.writes += 1

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "table": self.table,
            "degraded": self.outage.degraded,
            "hits": self.hits,
            "writes": self.writes,
            "faults": self.outage.faults,
            "skipped_oversize": self.skipped_oversize,
        }

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # a write on its way lands before the process ends
