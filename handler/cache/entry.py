"""What a cache entry holds, and how it is written and read back without ever being misread.

An entry carries its schema version and the key it was stored under: an entry from an older
release, a damaged one, or one under the wrong key reads as a miss, never as an answer.

Three kinds: a completion (no `kind` field, as entries always had), the choices of a request for
several (`kind: "choices"`, each a completion's fields, under the completions' schema version), and an
embedding vector (`kind: "embedding"`, with a schema version of its own), each read back only as its own
kind.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import dataclass
from typing import TypeVar

from handler.core.types import Choices, Completion, Embedding, FinishReason, TokenLogprob

# 2: keys name the full-content identity and the model input as the model sees it
# 3: grammar, logit bias and logprobs join the key; entries carry log-probabilities
SCHEMA_VERSION = 3
# 1: the vector as little-endian float64 in base64 (exact for float32 and normalized values), and its tokens
EMBEDDING_SCHEMA_VERSION = 1
EMBEDDING_KIND = "embedding"
CHOICES_KIND = "choices"
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    value: Completion | Choices | Embedding
    created: float  # wall-clock seconds, so an entry's age survives a restart

    def expired(self, ttl: float | None) -> bool:
        return ttl is not None and time.time() - self.created >= ttl


def encode(key: str, entry: Entry) -> bytes:
    c = entry.value
    if isinstance(c, Embedding):
        return _encode_embedding(key, entry.created, c)
    head: dict[str, object] = {"v": SCHEMA_VERSION, "key": key, "created": entry.created}
    if isinstance(c, Choices):
        body: dict[str, object] = {"kind": CHOICES_KIND, "choices": [_completion_fields(one) for one in c.completions]}
    else:
        body = _completion_fields(c)
    return json.dumps({**head, **body}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _completion_fields(c: Completion) -> dict[str, object]:
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "logprobs": None if c.logprobs is None else [_encode_logprob(t) for t in c.logprobs],
        "stop": c.stop,
    }


def decode(key: str, raw: object) -> Entry | None:
    """The entry, or None for anything that is not exactly a current entry for this key."""
    if not isinstance(raw, bytes | bytearray):
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        if data.get("kind") == EMBEDDING_KIND:
            return _decode_embedding(data)
        if data.get("kind", CHOICES_KIND) != CHOICES_KIND or data.get("v") != SCHEMA_VERSION:
            return None
        value: Completion | Choices
        if "kind" in data:
            choices = tuple(_completion(_typed(one, dict)) for one in _typed(data["choices"], list))
            if len(choices) < 2:
                raise ValueError("an answer of choices has several")
            value = Choices(choices)
        else:
            value = _completion(data)
        created = data["created"]
        return Entry(value, float(created if isinstance(created, float) else _typed(created, int)))
    except (ValueError, KeyError, TypeError):
        return None


def _completion(data: dict[str, object]) -> Completion:
    return Completion(
        text=_typed(data["text"], str),
        finish_reason=FinishReason(_typed(data["finish_reason"], str)),
        prompt_tokens=_typed(data["prompt_tokens"], int),
        completion_tokens=_typed(data["completion_tokens"], int),
        logprobs=_decode_logprobs(data.get("logprobs")),
        stop=None if data.get("stop") is None else _typed(data["stop"], str),
    )


def _encode_embedding(key: str, created: float, embedding: Embedding) -> bytes:
    packed = struct.pack(f"<{len(embedding.vector)}d", *embedding.vector)
    vector = base64.b64encode(packed).decode("ascii")
    return json.dumps(
        {
            "kind": EMBEDDING_KIND,
            "v": EMBEDDING_SCHEMA_VERSION,
            "key": key,
            "created": created,
            "vector": vector,
            "prompt_tokens": embedding.prompt_tokens,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def _decode_embedding(data: dict[str, object]) -> Entry | None:
    if data.get("v") != EMBEDDING_SCHEMA_VERSION:
        return None
    packed = base64.b64decode(_typed(data["vector"], str), validate=True)
    if not packed or len(packed) % 8:
        return None
    vector = struct.unpack(f"<{len(packed) // 8}d", packed)
    created = data["created"]
    return Entry(
        Embedding(vector, _typed(data["prompt_tokens"], int)),
        float(created if isinstance(created, float) else _typed(created, int)),
    )


def _encode_logprob(entry: TokenLogprob) -> list[object]:
    """Compact, and exact: bytes as hex (a token may be part of a UTF-8 character), floats as JSON writes them."""
    return [entry.token.hex(), entry.logprob, [[token.hex(), logprob] for token, logprob in entry.top]]


def _decode_logprobs(raw: object) -> tuple[TokenLogprob, ...] | None:
    if raw is None:
        return None
    return tuple(
        TokenLogprob(
            bytes.fromhex(_typed(token, str)),
            _number(logprob),
            tuple((bytes.fromhex(_typed(t, str)), _number(lp)) for t, lp in _typed(top, list)),
        )
        for token, logprob, top in _typed(raw, list)
    )


def _number(value: object) -> float:
    return float(value) if isinstance(value, float) else float(_typed(value, int))


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value
