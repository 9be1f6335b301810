"""What the chat template needs from a GGUF file's metadata, read from its header without loading it.

The format: magic, version, tensor count, metadata count, then each metadata entry as a key (a
length-prefixed string), a value type and the value; arrays carry their element type and count.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from handler.core.errors import ModelUnavailable

TEMPLATE_KEY = "tokenizer.chat_template"
TOKENS_KEY = "tokenizer.ggml.tokens"
BOS_KEY, EOS_KEY = "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"

_STRING, _ARRAY = 8, 9
# The metadata lead a GGUF file; even a large vocabulary with its merges takes under 10 MB. Searching
# no further keeps a model without a chat template from being read whole.
METADATA_SEARCH_BYTES = 32 * 1024 * 1024
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass(frozen=True)
class ChatMetadata:
    template: str | None  # None: the model has no chat template
    bos_token: str  # the text of its begin- and end-of-sequence tokens, as templates write them
    eos_token: str


def read_chat_metadata(path: str | Path) -> ChatMetadata:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ModelUnavailable(f"cannot read the GGUF metadata of {path}: {exc!r}") from exc


def _parse(data: mmap.mmap) -> ChatMetadata:
    """Finds the few keys it needs by their bytes (C speed) instead of walking every entry: a large
    vocabulary is hundreds of thousands of strings. A match counts only where the key's own length
    prefix and a known value type stand around it."""
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    template = _value_at(data, TEMPLATE_KEY, _STRING)
    tokens_at = _key_end(data, TOKENS_KEY)

    def token(key: str) -> str:
        index = _value_at(data, key, 4)  # uint32
        if not isinstance(index, int) or tokens_at is None:
            return ""
        (kind, element, length) = struct.unpack_from("<IIQ", data, tokens_at)
        if kind != _ARRAY or element != _STRING or index >= length:
            return ""
        offset = tokens_at + 16
        for _ in range(index):  # token ids of bos and eos are small in practice
            (size,) = struct.unpack_from("<Q", data, offset)
            offset += 8 + size
        return _string(data, offset)[0]

    return ChatMetadata(template if isinstance(template, str) else None, token(BOS_KEY), token(EOS_KEY))


def _key_end(data: mmap.mmap, key: str) -> int | None:
    """Where the value (its type tag) of metadata entry `key` starts, or None."""
    name = key.encode()
    needle = struct.pack("<Q", len(name)) + name
    found = data.find(needle, 24, min(len(data), METADATA_SEARCH_BYTES))
    return None if found == -1 else found + len(needle)


def _value_at(data: mmap.mmap, key: str, kind: int) -> object:
    offset = _key_end(data, key)
    if offset is None:
        return None
    (found_kind,) = struct.unpack_from("<I", data, offset)
    if found_kind != kind:
        return None
    if kind == _STRING:
        return _string(data, offset + 4)[0]
    (value,) = struct.unpack_from("<" + _FIXED[kind], data, offset + 4)
    return value


def _string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start : start + size].decode("utf-8"), start + size
