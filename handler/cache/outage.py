"""A slow tier's fault state, shared by the disk and the table: how a broken tier steps aside.

After a fault the tier is left alone for `retry_seconds` (so requests do not each pay for the
fault again), the next use tries it again, and the log says once that it went and once that it
came back, under the tier's own logger.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class Outage:
    def __init__(
        self, tier: str, fallback: str, retry_seconds: float, log: logging.Logger, context: dict[str, Any]
    ) -> None:
        self.tier = tier  # "disk cache", "shared cache"
        self.fallback = fallback  # what answers meanwhile, for the warning
        self.retry_seconds = retry_seconds
        self.log = log
        self.context = context  # which folder or table, for every line
        self.faults = 0
        self._since: float | None = None

    @property
    def degraded(self) -> bool:
        return self._since is not None

    def waiting(self) -> bool:
        """True while the tier should be left alone."""
        return self._since is not None and time.monotonic() - self._since < self.retry_seconds

    def fault(self, action: str, exc: BaseException) -> None:
        self.faults += 1
        if self._since is None:
            self.log.warning(
                "%s %s failed; answering from %s until it recovers",
                self.tier,
                action,
                self.fallback,
                extra={**self.context, "error": repr(exc), "retry_s": self.retry_seconds},
            )
        self._since = time.monotonic()

    def untrusted(self, key: str) -> None:
        """An entry that no signing key vouches for: never served, counted as a fault and logged each time
        (someone wrote it who should not have), while the tier stays in use for the entries that verify."""
        self.faults += 1
        self.log.warning(
            "%s returned an entry no signing key vouches for; not served", self.tier, extra={**self.context, "key": key}
        )

    def recovered(self) -> None:
        if self._since is not None:
            self._since = None
            self.log.warning("%s is back", self.tier, extra=self.context)
