"""Where the GGUF comes from, and which model it is.

A model's identity (for cache keys) is the sha256 of its content: the configured `model_sha256`
when there is one (a cold container reads nothing of the file), else the digest of the local file
as it is now (`model_identity`: paid once per version of the file). What is loaded is the very file
that was identified, through an open descriptor, so a rename between the two cannot swap it; and a
declared sha256 is checked against the file before it is loaded.

The model can also be an `s3://bucket/key` object, fetched once per container; its identity is
the declared sha256 or the object's ETag and size.

An S3 model is downloaded to the ephemeral disk into a temporary name and renamed only once
its size (and sha256, when configured) checks out, so the final name always means a complete,
verified file: a later start in the same environment reuses it and never a partial one. Processes
that share the disk take turns: one downloads, the others then reuse its file.
boto3 is imported only here, only for an S3 source.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from handler.core.errors import ModelMismatch, ModelUnavailable
from handler.core.settings import Settings
from handler.engine.model_files.digest import sha256_of
from handler.engine.model_files.gguf_header import ChatMetadata
from handler.engine.model_files.identity import DigestMemo, FileVersion

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class OpenedModel:
    """A model file held open for loading: what llama.cpp should open, and who it is."""

    path: str
    identity: str
    version: FileVersion | None  # a local file's version, to notice when the path holds another one
    release: Callable[[], None] = lambda: None


class ModelSource(Protocol):
    def identity(self) -> str:
        """Who the model at the source is now, for cache keys. Blocking: may read or fetch."""

    def known_identity(self) -> str | None:
        """The identity when it is known without blocking (at most a stat); None when identity() must run."""

    def open(self) -> OpenedModel:
        """The model file, identified and held, for loading; may download. Raises ModelUnavailable."""

    def replaced(self, opened: OpenedModel) -> bool:
        """True when the source now holds another file than the one opened (renamed over, rewritten)."""

    def header_path(self) -> str:
        """A local file to read the model's metadata from; may download. Raises ModelUnavailable."""

    def known_chat(self, identity: str) -> ChatMetadata | None:
        """The chat metadata of the model `identity` names, when a record beside it has it (at most a stat)."""

    def present(self) -> bool | None:
        """Whether the model is there to load, when a stat can tell (None: not without a request)."""


def sha256_identity(digest: str) -> str:
    return f"sha256:{digest}"


class LocalSource:
    def __init__(self, path: str, sha256: str | None, memo: DigestMemo) -> None:
        self.path = path
        self.sha256 = sha256
        self.memo = memo
        self._last: tuple[FileVersion, str] | None = None

    def _version(self) -> FileVersion:
        try:
            return FileVersion.at(self.path)
        except OSError as exc:
            raise ModelUnavailable(f"cannot read model file {self.path}: {exc}") from exc

    def known_identity(self) -> str | None:
        if self.sha256:
            return sha256_identity(self.sha256)
        last = self._last
        try:
            if last is not None and FileVersion.at(self.path) == last[0]:
                return last[1]
        except OSError:
            return None
        return None

    def identity(self) -> str:
        if self.sha256:
            return sha256_identity(self.sha256)
        version = self._version()
        identity = sha256_identity(self.memo.digest(self.path, version))
        self._last = (version, identity)
        return identity

    def open(self) -> OpenedModel:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise ModelUnavailable(f"model file {self.path} cannot be opened: {exc}") from exc
        try:
            magic = os.pread(fd, len(GGUF_MAGIC), 0)
            if magic != GGUF_MAGIC:
                raise ModelUnavailable(f"model file {self.path} is not a GGUF file (starts with {magic!r})")
            version = FileVersion.of(os.fstat(fd))
            digest = self.memo.digest(self.path, version, opened=fd)
            if self.sha256 and digest != self.sha256:
                raise ModelMismatch(
                    f"model file {self.path} has sha256 {digest}, but model_sha256 in the config is {self.sha256}: "
                    "nothing is loaded or stored under the declared identity until they agree (set model_sha256, or "
                    "CHAT_MODEL_SHA256, to the file's digest, or clear it to serve the file unpinned)"
                )
        except BaseException:
            os.close(fd)
            raise
        by_descriptor = f"/proc/self/fd/{fd}"  # the very file identified, whatever the path holds meanwhile
        path = by_descriptor if os.path.exists(by_descriptor) else self.path
        return OpenedModel(path, sha256_identity(digest), version, lambda: os.close(fd))

    def replaced(self, opened: OpenedModel) -> bool:
        try:
            return opened.version is not None and FileVersion.at(self.path) != opened.version
        except OSError:
            return False  # gone from the path: the loaded model is still the one it was

    def header_path(self) -> str:
        return self.path

    def known_chat(self, identity: str) -> ChatMetadata | None:
        try:
            version = FileVersion.at(self.path)
        except OSError:
            return None
        return self.memo.known_chat(self.path, version, identity.removeprefix("sha256:"))

    def present(self) -> bool | None:
        return os.path.isfile(self.path)


class S3Source:
    def __init__(self, uri: str, sha256: str | None, download_dir: str, client: Any = None) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ModelUnavailable(f"{uri} is not an s3://bucket/key URI")
        self.uri, self.bucket, self.key, self.sha256 = uri, bucket, key, sha256
        self.download_dir = Path(download_dir)
        self._client = client
        self._lock = threading.Lock()
        self._identity: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
            )
        return self._client

    def _head(self) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.key)
            return head
        except Exception as exc:
            raise ModelUnavailable(f"cannot reach model {self.uri}: {exc!r}") from exc

    def identity(self) -> str:
        """The declared sha256 costs nothing; otherwise the object's ETag and size (one HEAD request),
        once per container: the downloaded file is the model for the container's life."""
        if self._identity is None:
            if self.sha256:
                self._identity = sha256_identity(self.sha256)
            else:
                head = self._head()
                self._identity = f"s3:{self.bucket}/{self.key}:etag:{_etag(head)}:size:{head['ContentLength']}"
        return self._identity

    def known_identity(self) -> str | None:
        return self._identity

    def open(self) -> OpenedModel:
        identity = self.identity()
        path = self.local_path()
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
        if magic != GGUF_MAGIC:
            raise ModelUnavailable(f"model {self.uri} is not a GGUF file (starts with {magic!r})")
        return OpenedModel(path, identity, None)

    def replaced(self, opened: OpenedModel) -> bool:
        return False

    def header_path(self) -> str:
        return self.local_path()

    def known_chat(self, identity: str) -> ChatMetadata | None:
        return None  # known once downloaded: the header of the local copy is read then

    def present(self) -> bool | None:
        return None

    def _target(self, head: dict[str, Any] | None) -> Path:
        """Named after the content (sha256, or the object's ETag), so a new model under the same key
        never reuses an old file; only a verified download ever gets this name."""
        content = self.sha256 or hashlib.sha256(f"{self.uri}:{_etag(head or {})}".encode()).hexdigest()
        return self.download_dir / f"{content[:16]}-{Path(self.key).name}"

    def local_path(self) -> str:
        with self._lock:
            head = None if self.sha256 else self._head()
            target = self._target(head)
            if target.is_file():
                log.info("reusing downloaded model", extra={"path": str(target), "uri": self.uri})
                return str(target)
            self._download(target, head or self._head())
            return str(target)

    def _download(self, target: Path, head: dict[str, Any]) -> None:
        """Download under an exclusive lock on the folder: several processes of one environment share
        /tmp (uvicorn workers, Lambda Managed Instances' Python processes). The first downloads; the others
        wait, then find the complete file. The lock is the folder itself, so no lock file is ever left
        beside the models, and the kernel drops it when its holder dies."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            folder = os.open(target.parent, os.O_RDONLY)
        except OSError as exc:
            raise ModelUnavailable(f"cannot use {target.parent} for the download of {self.uri}: {exc}") from exc
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            if target.is_file():
                log.info("model downloaded by another process", extra={"path": str(target), "uri": self.uri})
                return
            self._download_locked(target, head)
        finally:
            os.close(folder)  # releases the lock

    def _download_locked(self, target: Path, head: dict[str, Any]) -> None:
        for stale in target.parent.glob(target.name + ".partial-*"):
            # Only while holding the lock: a partial file is then one a dead process left, never one
            # another process is still writing.
            stale.unlink(missing_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        expected = int(head["ContentLength"])
        progress = _ProgressLog(self.uri, expected)
        started = time.perf_counter()
        try:
            self.client.download_file(self.bucket, self.key, str(partial), Callback=progress)
            size = partial.stat().st_size
            if size != expected:
                raise ModelUnavailable(f"download of {self.uri} is {size} bytes, expected {expected}")
            if self.sha256:
                actual = sha256_of(partial, progress=False)
                if actual != self.sha256:
                    raise ModelUnavailable(f"download of {self.uri} has sha256 {actual}, expected {self.sha256}")
            os.replace(partial, target)
        except ModelUnavailable:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise ModelUnavailable(f"download of {self.uri} failed: {exc!r}") from exc
        log.info(
            "model downloaded",
            extra={
                "uri": self.uri,
                "path": str(target),
                "bytes": expected,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )


class _ProgressLog:
    """boto3 transfer callback: a log line every 10%, which is what a function's log can show."""

    def __init__(self, uri: str, total: int) -> None:
        self.uri, self.total, self.done, self.next_mark = uri, max(total, 1), 0, 10
        self._lock = threading.Lock()  # boto3 calls back from its transfer threads

    def __call__(self, chunk: int) -> None:
        with self._lock:
            self.done += chunk
            percent = self.done * 100 // self.total
            if percent >= self.next_mark:
                log.info("downloading model", extra={"uri": self.uri, "percent": int(percent), "bytes": self.done})
                self.next_mark = (percent // 10 + 1) * 10


def _etag(head: dict[str, Any]) -> str:
    return str(head.get("ETag", "")).strip('"')


def model_source(settings: Settings) -> ModelSource:
    if settings.model_path.startswith("s3://"):
        return S3Source(settings.model_path, settings.model_sha256, settings.model_download_dir)
    return LocalSource(
        settings.model_path, settings.model_sha256, DigestMemo(Path(settings.model_download_dir) / "digests")
    )
