"""Entries the slow tiers hand back are checked to be this service's own: an HMAC over key and entry.

The disk folder and the fleet's table can be written by others than this service (anyone with the
folder's permissions; every function role with PutItem on the table, so one compromised container).
With signing keys configured, every entry is stored with HMAC-SHA256(key, cache key + entry) under
the first key, and read back only when one of the keys verifies it: the first signs, the others
only verify, which is how a key is rotated (add the new one first, drop the old one once the
entries it signed have expired). Without keys, entries are stored and trusted as they are.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from handler.cache.entry import Entry, decode
from handler.cache.outage import Outage

PREFIX = b"hmac-sha256:"
_TAG_HEX = 64


class EntrySigner:
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def seal(self, key: str, raw: bytes) -> bytes:
        """The bytes to store for entry `raw` under cache key `key`."""
        if not self._keys:
            return raw
        return PREFIX + _tag(self._keys[0], key, raw).encode("ascii") + b"\n" + raw

    def open(self, key: str, stored: bytes) -> bytes | None:
        """The entry `stored` holds for `key`, or None when no configured key vouches for it (a missing,
        wrong or other key's MAC). Without keys, what is stored is the entry."""
        if not self._keys:
            return stored
        head = len(PREFIX) + _TAG_HEX
        if not stored.startswith(PREFIX) or stored[head : head + 1] != b"\n":
            return None
        tag, raw = stored[len(PREFIX) : head].decode("ascii", "replace"), stored[head + 1 :]
        # Every key is tried, so the time taken does not tell which one (or whether any) matched.
        matched = [hmac.compare_digest(tag, _tag(secret, key, raw)) for secret in self._keys]
        return raw if any(matched) else None


def verified_entry(signer: EntrySigner, key: str, stored: object, outage: Outage) -> Entry | None:
    """The entry a slow tier handed back for `key`, or None: not a current entry for it, or one that no
    signing key vouches for (counted and logged by the tier's `outage`)."""
    payload = signer.open(key, stored) if isinstance(stored, bytes) else stored
    if payload is None:
        outage.untrusted(key)
        return None
    return decode(key, payload)


def _tag(secret: bytes, key: str, raw: bytes) -> str:
    message = key.encode("utf-8") + b"\0" + raw  # the key is part of what is signed: an entry cannot move
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
