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
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    (count,) = struct.unpack_from("<Q", data, 16)
    offset = 24
    scalars: dict[str, object] = {}
    token_offsets: list[int] = []  # where each token's string starts, read only for bos and eos
    for _ in range(count):
        key, offset = _string(data, offset)
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if kind == _ARRAY:
            (element, length) = struct.unpack_from("<IQ", data, offset)
            offset += 12
            if element == _STRING:
                record = key == TOKENS_KEY
                for _ in range(length):
                    if record:
                        token_offsets.append(offset)
                    (size,) = struct.unpack_from("<Q", data, offset)
                    offset += 8 + size
            else:
                offset += length * struct.calcsize("<" + _FIXED[element])
        elif kind == _STRING:
            scalars[key], offset = _string(data, offset)
        else:
            (scalars[key],) = struct.unpack_from("<" + _FIXED[kind], data, offset)
            offset += struct.calcsize("<" + _FIXED[kind])

    def token(key: str) -> str:
        index = scalars.get(key)
        if not isinstance(index, int) or not 0 <= index < len(token_offsets):
            return ""
        return _string(data, token_offsets[index])[0]

    template = scalars.get(TEMPLATE_KEY)
    return ChatMetadata(template if isinstance(template, str) else None, token(BOS_KEY), token(EOS_KEY))


def _string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start : start + size].decode("utf-8"), start + size
