"""What a cache entry holds, and how it is written and read back without ever being misread.

An entry carries its schema version and the key it was stored under: an entry from an older
release, a damaged one, or one under the wrong key reads as a miss, never as an answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TypeVar

from handler.core.types import Completion, FinishReason

SCHEMA_VERSION = 2  # 2: keys name the full-content identity and the model input as the model sees it
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    completion: Completion
    created: float  # wall-clock seconds, so an entry's age survives a restart

    def expired(self, ttl: float | None) -> bool:
        return ttl is not None and time.time() - self.created >= ttl


def encode(key: str, entry: Entry) -> bytes:
    c = entry.completion
    return json.dumps(
        {
            "v": SCHEMA_VERSION,
            "key": key,
            "created": entry.created,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def decode(key: str, raw: object) -> Entry | None:
    """The entry, or None for anything that is not exactly a current entry for this key."""
    if not isinstance(raw, bytes | bytearray):
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION or data.get("key") != key:
            return None
        completion = Completion(
            text=_typed(data["text"], str),
            finish_reason=FinishReason(_typed(data["finish_reason"], str)),
            prompt_tokens=_typed(data["prompt_tokens"], int),
            completion_tokens=_typed(data["completion_tokens"], int),
        )
        created = data["created"]
        return Entry(completion, float(created if isinstance(created, float) else _typed(created, int)))
    except (ValueError, KeyError, TypeError):
        return None


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value
