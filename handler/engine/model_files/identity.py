"""A local model file's identity for cache keys: its full sha256, paid once per version of the file.

A version is what `stat` tells without reading the file (size and modification time, and for the
runtime memo the device and inode too): a file replaced by rename or overwritten in place is a new
version. The digest of a version is found, in order, in a sidecar `<model>.sha256.json` written
when the file was made (model assembly, image build), in a memo under the download folder
(a read-only image folder cannot take a sidecar), or computed once and remembered in both.
The records also hold what the chat template needs from the file's header, so that a cold
cache hit on a chat request reads neither the model nor its header.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from handler.core.errors import ModelUnavailable
from handler.engine.model_files.digest import sha256_of
from handler.engine.model_files.gguf_header import ChatMetadata, read_chat_metadata

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256.json"


@dataclass(frozen=True)
class FileVersion:
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileVersion:
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @classmethod
    def at(cls, path: str | Path) -> FileVersion:
        return cls.of(os.stat(path))


def sidecar_of(path: str | Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def write_sidecar(path: str | Path, sha256: str) -> None:
    """Record the digest of the file as it is now; it holds only while size and mtime stay the same."""
    version = FileVersion.at(path)
    _write_json(sidecar_of(path), _record(path, version, sha256))


def _record(path: str | Path, version: FileVersion, sha256: str) -> dict[str, object]:
    record: dict[str, object] = {"sha256": sha256, "size": version.size, "mtime_ns": version.mtime_ns}
    try:
        record["chat"] = asdict(read_chat_metadata(path))
    except ModelUnavailable:
        pass  # not a GGUF file: the digest alone
    return record


class DigestMemo:
    """Digests of file versions, for one process; `memo_dir` keeps them across processes."""

    def __init__(self, memo_dir: str | Path) -> None:
        self.memo_dir = Path(memo_dir)
        self._known: dict[tuple[str, FileVersion], str] = {}
        self._lock = threading.Lock()

    def known(self, path: str, version: FileVersion) -> str | None:
        """The digest without reading the model file, or None."""
        found = self._known.get((path, version))
        if found is None:
            found = self._read_sidecar(path, version) or self._read_memo(version)
            if found is not None:
                self._known[(path, version)] = found
        return found

    def digest(self, path: str, version: FileVersion, opened: int | None = None) -> str:
        """The digest of this version, computed (reading the whole file) only when no record has it.
        `opened`: a descriptor of the very file to hash, so a rename meanwhile cannot swap it."""
        with self._lock:  # two first requests hash once
            found = self.known(path, version)
            if found is not None:
                return found
            source = Path(f"/proc/self/fd/{opened}") if opened is not None else Path(path)
            digest = sha256_of(source, progress=False)
            log.info("model file hashed", extra={"model_path": path, "bytes": version.size})
            self._known[(path, version)] = digest
            self._remember(path, version, digest, opened)
            return digest

    def known_chat(self, path: str, version: FileVersion, sha256: str) -> ChatMetadata | None:
        """The chat metadata recorded for this version of the file with this digest, or None."""
        for record in (self._sidecar_record(path, version), _read_json(self._memo_file(version))):
            chat = record.get("chat") if record and record.get("sha256") == sha256 else None
            if isinstance(chat, dict) and _chat_fields(chat):
                return ChatMetadata(chat["template"], chat["bos_token"], chat["eos_token"])
        return None

    def _sidecar_record(self, path: str, version: FileVersion) -> dict[str, object] | None:
        record = _read_json(sidecar_of(path))
        if record and record.get("size") == version.size and record.get("mtime_ns") == version.mtime_ns:
            return record
        return None

    def _read_sidecar(self, path: str, version: FileVersion) -> str | None:
        record = self._sidecar_record(path, version)
        return _hex(record.get("sha256")) if record else None

    def _memo_file(self, version: FileVersion) -> Path:
        return self.memo_dir / f"{version.device}-{version.inode}-{version.size}-{version.mtime_ns}.json"

    def _read_memo(self, version: FileVersion) -> str | None:
        record = _read_json(self._memo_file(version))
        return _hex(record.get("sha256")) if record else None

    def _remember(self, path: str, version: FileVersion, digest: str, opened: int | None) -> None:
        record = _record(f"/proc/self/fd/{opened}" if opened is not None else path, version, digest)
        for target in (sidecar_of(path), self._memo_file(version)):
            try:
                _write_json(target, record)
            except OSError:
                continue  # a read-only folder: the other record, or this process's memory, serves


def _chat_fields(chat: dict[str, object]) -> bool:
    template = chat.get("template")
    return (template is None or isinstance(template, str)) and all(
        isinstance(chat.get(k), str) for k in ("bos_token", "eos_token")
    )


def _hex(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Written aside and renamed, so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    partial.write_text(json.dumps(data), encoding="utf-8")
    os.replace(partial, path)
