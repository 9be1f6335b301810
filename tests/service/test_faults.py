"""Faults while running, injected, and the recovery without a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from handler.app import create_app
from handler.core.settings import Settings
from tests.conftest import LiveServer


class FullDisk:
    """Stands in for diskcache's connection while the disk is full: the fault injected at the tier's seam."""

    def get(self, key, default=None):
        return default

    def set(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


def test_full_disk_degrades_to_memory_and_recovers(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"cache_disk_retry_seconds": 0}))
    disk = app.state.chat.cache.tier("disk")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        disk._cache = FullDisk()
        first = http.post("/chat", json={"prompt": "during the fault", "max_tokens": 6})
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        assert disk.outage.degraded and disk.outage.faults == 1
        again = http.post("/chat", json={"prompt": "during the fault", "max_tokens": 6})
        assert again.headers["x-cache"] == "HIT-MEMORY" and again.json() == first.json()
        # The disk has room again: the next store reopens the real cache (retry after 0 s) and works.
        stored = http.post("/chat", json={"prompt": "after the fault", "max_tokens": 6})
        assert stored.status_code == 200 and not disk.outage.degraded
    with LiveServer(create_app(settings)) as fresh, httpx.Client(base_url=fresh.url, timeout=30) as http:
        assert http.post("/chat", json={"prompt": "after the fault", "max_tokens": 6}).headers["x-cache"] == "HIT-DISK"


def test_model_file_removed_after_load_keeps_answering(settings: Settings, tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_model.read_bytes())
    app = create_app(settings.model_copy(update={"model_path": str(model)}))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.post("/chat", json={"prompt": "one", "max_tokens": 6, "cache": "off"})
        model.unlink()  # an operator's mistake: the loaded model stays in memory
        after = http.post("/chat", json={"prompt": "one", "max_tokens": 6, "cache": "off"})
        assert before.status_code == after.status_code == 200
        assert before.json() == after.json()
        assert http.get("/health").json()["model"]["loaded"] is True


def corrupt_in_place(model: Path) -> None:
    """What `cp other.gguf model.gguf` does to a loaded file: same inode, truncated, rewritten."""
    size = model.stat().st_size
    with model.open("r+b") as f:
        f.truncate(size // 3)
        f.seek(0)
        f.write(b"not a model any more" * 100)


def test_a_model_file_overwritten_in_place_keeps_answering_without_mmap(
    settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_model.read_bytes())
    app = create_app(settings.model_copy(update={"model_path": str(model), "use_mmap": False}))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.post("/chat", json={"prompt": "one", "max_tokens": 8, "cache": "off"})
        corrupt_in_place(model)  # with the file mapped, this could crash the process (SIGBUS)
        after = http.post("/chat", json={"prompt": "one", "max_tokens": 8, "cache": "off"})
        assert before.status_code == after.status_code == 200
        assert before.json() == after.json()
    restarted = create_app(settings.model_copy(update={"model_path": str(model)}))
    with LiveServer(restarted) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/chat", json={"prompt": "two", "max_tokens": 4}).status_code == 503  # a clear error
        model.write_bytes(tiny_model.read_bytes())  # the fault is gone: the next request loads, no restart
        assert http.post("/chat", json={"prompt": "two", "max_tokens": 4}).status_code == 200


def test_a_mapped_model_replaced_by_rename_keeps_answering(
    settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    """The safe way to change a mapped model's file: write the new file aside, then rename it over."""
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_model.read_bytes())
    app = create_app(settings.model_copy(update={"model_path": str(model)}))  # use_mmap: true, the default
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.post("/chat", json={"prompt": "one", "max_tokens": 8, "cache": "off"})
        replacement = tmp_path / "model.gguf.new"
        replacement.write_bytes(b"garbage" * 1000)
        replacement.replace(model)  # the loaded model keeps its own (old) inode
        after = http.post("/chat", json={"prompt": "one", "max_tokens": 8, "cache": "off"})
        assert before.status_code == after.status_code == 200
        assert before.json() == after.json()


def test_a_cache_database_deleted_while_running_is_noticed_and_started_afresh(
    settings: Settings, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    app = create_app(settings.model_copy(update={"cache_dir": str(cache_dir), "cache_disk_retry_seconds": 0}))
    client = TestClient(app)

    def ask(prompt: str) -> str:
        return client.post("/chat", json={"prompt": prompt, "max_tokens": 4}).headers["x-cache"]

    assert ask("kept") == "MISS"
    for part in cache_dir.glob("cache.db*"):
        part.unlink()  # an operator's clean-up, under a running service
    assert ask("after the deletion") == "MISS"
    health = client.get("/health").json()
    assert health["cache"]["disk"]["faults"] == 1
    restarted = TestClient(create_app(settings.model_copy(update={"cache_dir": str(cache_dir)})))
    again = restarted.post("/chat", json={"prompt": "after the deletion", "max_tokens": 4})
    assert again.headers["x-cache"] == "HIT-DISK"  # written to a database that is really there


def test_the_disk_limit_bounds_the_write_ahead_log_too(tmp_path: Path) -> None:
    from handler.cache.disk import DiskTier
    from handler.cache.entry import Entry
    from handler.core.types import Completion, FinishReason

    limit = 1024 * 1024
    tier = DiskTier(str(tmp_path / "cache"), limit, None, 30)
    for i in range(3000):
        tier.put(f"key-{i}", Entry(Completion("x" * 2000, FinishReason.STOP, 5, 5), 1.0))
    used = sum(part.stat().st_size for part in (tmp_path / "cache").iterdir())
    assert used < 1.5 * limit  # without a bound on the log: 5 times the limit


def test_health_says_degraded_while_the_model_file_is_missing(settings: Settings, tmp_path: Path) -> None:
    missing = settings.model_copy(update={"model_path": str(tmp_path / "not-yet.gguf")})
    health = TestClient(create_app(missing)).get("/health").json()
    assert health["status"] == "degraded" and health["model"]["available"] is False
    assert TestClient(create_app(settings)).get("/health").json()["status"] == "ok"
