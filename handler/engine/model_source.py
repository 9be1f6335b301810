"""Where the GGUF comes from, and who it is.

A local file's identity (for cache keys) is the configured sha256 when there is one (so a cold
container reads nothing of the file), else a fingerprint of its size and three 1 MiB samples;
the size joins either way, so a model swapped under a stale `model_sha256` still misses.

The model can also be an `s3://bucket/key` object, fetched once per container.

An S3 model is downloaded to the ephemeral disk into a temporary name and renamed only once
its size (and sha256, when configured) checks out, so the final name always means a complete,
verified file: a later start in the same environment reuses it and never a partial one.
boto3 is imported only here, only for an S3 source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from handler.core.config import Settings
from handler.core.errors import ModelUnavailable

log = logging.getLogger(__name__)

SAMPLE = 1024 * 1024


def model_identity(model_path: str, declared_sha256: str | None = None) -> str:
    """Who the model is, cheaply: a stat, and three 1 MiB reads unless the sha256 is declared."""
    size = os.stat(model_path).st_size
    if declared_sha256:
        return f"sha256:{declared_sha256}:size:{size}"
    digest = hashlib.sha256(str(size).encode())
    with open(model_path, "rb") as f:
        for offset in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
            f.seek(offset)
            digest.update(f.read(SAMPLE))
    return f"sample:{digest.hexdigest()}:size:{size}"


class ModelSource(Protocol):
    def identity(self) -> str:
        """Who the model is, for cache keys; as cheap as the source allows."""

    def local_path(self) -> str:
        """A local file llama.cpp can load; may download. Raises ModelUnavailable."""


class LocalSource:
    def __init__(self, path: str, sha256: str | None) -> None:
        self.path = path
        self.sha256 = sha256

    def identity(self) -> str:
        try:
            return model_identity(self.path, self.sha256)
        except OSError as exc:
            raise ModelUnavailable(f"cannot identify model {self.path}: {exc}") from exc

    def local_path(self) -> str:
        return self.path


class S3Source:
    def __init__(self, uri: str, sha256: str | None, download_dir: str, client: Any = None) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ModelUnavailable(f"{uri} is not an s3://bucket/key URI")
        self.uri, self.bucket, self.key, self.sha256 = uri, bucket, key, sha256
        self.download_dir = Path(download_dir)
        self._client = client
        self._lock = threading.Lock()

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
        """The declared sha256 costs nothing; otherwise the object's ETag and size (one HEAD request)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        head = self._head()
        return f"s3:{self.bucket}/{self.key}:etag:{_etag(head)}:size:{head['ContentLength']}"

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
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(target.name + ".partial-*"):
            stale.unlink(missing_ok=True)  # left by an interrupted start; never used
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
                from handler.engine.file_digest import sha256_of

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
    return LocalSource(settings.model_path, settings.model_sha256)
