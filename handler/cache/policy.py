"""Per-request cache control, from the `Cache-Control` header or the request body.

`no-cache`: do not answer from the cache (generate afresh), but store the new answer.
`no-store`: the answer may come from the cache, but a new one is not stored.
`off` (body only), or both directives: neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CacheMode = Literal["default", "no-cache", "no-store", "off"]


@dataclass(frozen=True)
class CachePolicy:
    read: bool = True
    store: bool = True


def cache_policy(header: str | None, mode: CacheMode = "default") -> CachePolicy:
    directives = {part.strip().split("=", 1)[0].lower() for part in (header or "").split(",")}
    no_cache = "no-cache" in directives or mode in ("no-cache", "off")
    no_store = "no-store" in directives or mode in ("no-store", "off")
    return CachePolicy(read=not no_cache, store=not no_store)
