"""The tiered response cache, end to end over real HTTP, on a real model and a real disk cache."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import diskcache
import httpx
import pytest
from fastapi import FastAPI

from handler.app import create_app
from handler.cache.entry import SCHEMA_VERSION
from handler.cache.keys import cache_key
from handler.cache.policy import CachePolicy
from handler.cache.response_cache import ResponseCache
from handler.core.settings import Settings
from handler.core.types import ModelInput, SamplingParams
from handler.engine.model import ModelHolder, load_engine
from handler.engine.model_files.identity import DigestMemo
from handler.engine.model_files.source import LocalSource
from handler.service.prompts import template_input
from tests.conftest import LiveServer, WrappedEngine
from tests.tiny_gguf import write_tiny_gguf

Ask = Callable[..., httpx.Response]


@pytest.fixture
def serve(live_server) -> Callable[[Settings], tuple[FastAPI, Ask]]:
    """Start an app on `settings` over uvicorn; return it and a `/chat` caller."""

    def start(settings: Settings, model: ModelHolder | None = None) -> tuple[FastAPI, Ask]:
        app = create_app(settings, model=model)
        url = live_server(app).url

        def ask(prompt: str = "hello", max_tokens: int = 8, headers: dict | None = None, **body) -> httpx.Response:
            response = httpx.post(
                f"{url}/chat", json={"prompt": prompt, "max_tokens": max_tokens, **body}, headers=headers, timeout=60
            )
            assert response.status_code == 200, response.text
            return response

        return app, ask

    return start


def sources(*responses: httpx.Response) -> list[str]:
    return [r.headers["x-cache"] for r in responses]


def test_miss_then_memory_hit_with_the_same_answer(settings: Settings, serve) -> None:
    app, ask = serve(settings)
    first, second = ask(), ask()
    assert sources(first, second) == ["MISS", "HIT-MEMORY"]
    assert first.json() == second.json()
    assert app.state.model.generations == 1


def test_disk_hit_on_a_fresh_container_never_loads_the_model_and_is_promoted(settings: Settings, serve) -> None:
    _, warm = serve(settings)
    expected = warm().json()
    cold_app, ask = serve(settings)  # new memory, same disk
    first, second = ask(), ask()
    assert sources(first, second) == ["HIT-DISK", "HIT-MEMORY"]
    assert first.json() == second.json() == expected
    assert cold_app.state.model.loaded is False
    stats = httpx.get(str(first.url).replace("/chat", "/health")).json()["cache"]
    assert (stats["memory"]["hits"], stats["disk"]["hits"], stats["misses"]) == (1, 1, 0)
    assert stats["disk"]["entries"] == 1 and stats["disk"]["bytes"] > 0


def test_memory_lru_evicts_the_least_recently_used(settings: Settings, serve) -> None:
    app, ask = serve(settings.model_copy(update={"cache_memory_entries": 2, "cache_dir": None}))
    ask("a"), ask("b"), ask("a"), ask("c")  # b is now the least recently used
    assert sources(ask("a"), ask("c"), ask("b")) == ["HIT-MEMORY", "HIT-MEMORY", "MISS"]
    assert app.state.model.generations == 4


def test_evicted_from_memory_is_still_on_disk(settings: Settings, serve) -> None:
    _, ask = serve(settings.model_copy(update={"cache_memory_entries": 1}))
    ask("a"), ask("b")
    assert sources(ask("a")) == ["HIT-DISK"]


def test_ttl_expiry_in_both_tiers(settings: Settings, serve) -> None:
    ttl_settings = settings.model_copy(update={"cache_ttl_seconds": 0.5})
    _, ask = serve(ttl_settings)
    assert sources(ask(), ask()) == ["MISS", "HIT-MEMORY"]
    time.sleep(0.6)
    assert sources(ask()) == ["MISS"]
    _, fresh_container = serve(ttl_settings)
    assert sources(fresh_container()) == ["HIT-DISK"]
    time.sleep(0.6)
    _, later_container = serve(ttl_settings)
    assert sources(later_container()) == ["MISS"]


def test_per_request_control(settings: Settings, serve) -> None:
    app, ask = serve(settings)
    ask()
    assert sources(ask(headers={"Cache-Control": "no-cache"})) == ["MISS"]  # generated afresh ...
    assert app.state.model.generations == 2
    assert sources(ask(headers={"Cache-Control": "max-age=0, no-store"})) == ["HIT-MEMORY"]  # may read
    assert sources(ask("unstored", headers={"Cache-Control": "no-store"}), ask("unstored")) == ["MISS", "MISS"]
    assert sources(ask("off", cache="off"), ask("off", cache="off"), ask("off")) == ["MISS", "MISS", "MISS"]
    assert sources(ask("off"), ask("off", cache="no-cache"), ask("off", cache="no-store")) == [
        "HIT-MEMORY",
        "MISS",
        "HIT-MEMORY",
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"system_prompt": "Answer in prose."},
        {"prompt_template": "Q: {prompt}\nA ({system_prompt}):"},
        {"temperature": 0.7},
        {"top_k": 5},
        {"seed": 7},
        {"stop": ["Human:", "\n"]},
        {"n_ctx": 256},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_config_change_misses(settings: Settings, serve, change: dict) -> None:
    _, ask = serve(settings)
    ask()
    _, same = serve(settings)
    assert sources(same()) == ["HIT-DISK"]  # the control: an unchanged config hits
    _, changed = serve(settings.model_copy(update=change))
    assert sources(changed()) == ["MISS"]


def test_a_different_model_file_at_the_same_path_misses(settings: Settings, serve, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "model.gguf", seed=1)
    model_settings = settings.model_copy(update={"model_path": str(path)})
    _, ask = serve(model_settings)
    first = ask("same words", max_tokens=16)
    write_tiny_gguf(path, seed=2)  # same path, same size, other weights
    app, ask_again = serve(model_settings)
    second = ask_again("same words", max_tokens=16)
    assert sources(second) == ["MISS"]
    assert app.state.model.generations == 1
    assert first.json() != second.json()


def test_key_covers_every_input_and_is_canonical() -> None:
    params = SamplingParams(8, ("Human:",), 0.0, 0.95, 40, 0.05, 1.0, 0)
    base = cache_key("m", "p", params, 512)
    assert base == cache_key("m", "p", params, 512)
    assert len(base) == 64
    variants = [
        cache_key("m2", "p", params, 512),
        cache_key("m", "p ", params, 512),
        cache_key("m", "p", params, 1024),
        cache_key("m", "p", SamplingParams(9, ("Human:",), 0.0, 0.95, 40, 0.05, 1.0, 0), 512),
        cache_key("m", "p", SamplingParams(8, ("Human:", "x"), 0.0, 0.95, 40, 0.05, 1.0, 0), 512),
        cache_key("m", "p", SamplingParams(8, ("Human:",), 0.0, 0.95, 40, 0.05, 1.1, 0), 512),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_model_identity_is_the_declared_sha256_or_the_files_own(tiny_model: Path, tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo")
    declared = "ab" * 32
    assert LocalSource(str(tmp_path / "not-even-there.gguf"), declared, memo).identity() == f"sha256:{declared}"
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=3)
    own = LocalSource(str(tiny_model), None, memo).identity()
    assert own == f"sha256:{hashlib.sha256(tiny_model.read_bytes()).hexdigest()}"
    assert own != LocalSource(str(other), None, memo).identity()


class NotingEngine(WrappedEngine):
    """The real engine, noting the stop strings each generation was handed: observed, nothing faked."""

    def __init__(self, real) -> None:
        super().__init__(real)
        self.stops: list[tuple[str, ...]] = []

    def submit(self, tokens, params, **kwargs):
        self.stops.append(params.stop)
        return super().submit(tokens, params, **kwargs)


def test_the_key_and_the_generation_see_the_same_stop_strings(settings: Settings) -> None:
    """Decided once: a stop only the input carries stops the generation and is in the key, and stops
    spelled twice are the same generation, so the same key."""
    engines: list[NotingEngine] = []

    def loader(s):
        engines.append(NotingEngine(load_engine(s)))
        return engines[-1]

    service = create_app(settings, model=ModelHolder(settings, loader=loader)).state.chat
    params = service.params_for(24)
    whole = asyncio.run(service.answer(ModelInput.text("a story"), params, CachePolicy(store=False))).completion.text
    # One ASCII character: the text leaves out bytes that do not decode, which a longer stop could span.
    stop = next((c for c in whole[1:] if c.isascii() and c.isalnum()), None)
    assert stop is not None, whole
    prompt = ModelInput.text("a story", stop=(stop,))  # the request itself asks for no stop string
    stopped = asyncio.run(service.answer(prompt, params, CachePolicy())).completion
    assert (stopped.text, stopped.finish_reason) == (whole[: whole.index(stop)], "stop")
    assert engines[0].stops[-1] == (stop,)
    stops = dataclasses.replace(params, stop=(stop,))
    key = cache_key(stopped.model_identity or "", prompt.key_material(), stops, settings.n_ctx)
    assert service.cache.tier("memory").get(key) is not None
    twice = asyncio.run(service.answer(prompt, dataclasses.replace(params, stop=(stop, stop)), CachePolicy()))
    assert twice.source == "HIT-MEMORY" and twice.completion.text == stopped.text


class SlowEngine(WrappedEngine):
    """The real engine, made slow to generate so identical requests overlap: a delay injected, nothing faked."""

    def submit(self, tokens, params, **kwargs):
        time.sleep(0.5)
        return super().submit(tokens, params, **kwargs)


def test_identical_concurrent_requests_share_one_generation(settings: Settings, serve) -> None:
    app, ask = serve(settings, model=ModelHolder(settings, loader=lambda s: SlowEngine(load_engine(s))))
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(ask("together", 12))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert app.state.model.generations == 1
    assert len({r.text for r in results}) == 1
    assert set(sources(*results)) <= {"MISS", "HIT-MEMORY"}


def test_unwritable_cache_dir_degrades_to_memory(settings: Settings, serve, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app, ask = serve(settings.model_copy(update={"cache_dir": str(blocker / "cache")}))
    first, second = ask(), ask()
    assert sources(first, second) == ["MISS", "HIT-MEMORY"]
    assert first.json() == second.json()
    disk = app.state.chat.cache.stats()["disk"]
    assert disk["degraded"] is True and disk["faults"] >= 1


def test_corrupt_cache_database_is_moved_aside_and_answers_stay_right(
    settings: Settings, serve, tmp_path: Path
) -> None:
    _, reference = serve(settings.model_copy(update={"cache_dir": None}))
    expected = reference().json()
    cache_dir = Path(settings.cache_dir)
    cache_dir.mkdir(parents=True)
    (cache_dir / "cache.db").write_bytes(b"this is not sqlite" * 100)
    _, ask = serve(settings)
    first = ask()
    assert sources(first) == ["MISS"] and first.json() == expected
    assert list(cache_dir.glob("cache.db.corrupt-*"))
    _, next_container = serve(settings)
    assert sources(next_container()) == ["HIT-DISK"]


def _key_for(app: FastAPI, prompt: str, max_tokens: int) -> str:
    service = app.state.chat
    identity = service.model.source.identity()
    return service._key(template_input(service.settings, prompt), service.params_for(max_tokens), identity)


@pytest.mark.parametrize(
    "stored",
    [
        b"\x00\xffgarbage",
        b'{"v": 0, "text": "stale answer from an old release"}',
        b'{"v": %d, "key": "someone-else", "created": 1, "text": "wrong", "finish_reason": "stop",'
        b' "prompt_tokens": 1, "completion_tokens": 1}' % SCHEMA_VERSION,
        b'{"v": %d, "key": "KEY", "created": 1, "text": 5, "finish_reason": "stop",'
        b' "prompt_tokens": 1, "completion_tokens": 1}' % SCHEMA_VERSION,
    ],
    ids=["garbage", "old-schema", "other-key", "wrong-type"],
)
def test_a_bad_disk_entry_is_never_served(settings: Settings, serve, stored: bytes) -> None:
    _, reference = serve(settings.model_copy(update={"cache_dir": None}))
    expected = reference().json()
    app, ask = serve(settings)
    key = _key_for(app, "hello", 8)
    with diskcache.Cache(settings.cache_dir) as disk:
        disk.set(key, stored.replace(b"KEY", key.encode()))
    first = ask()
    assert sources(first) == ["MISS"] and first.json() == expected
    _, next_container = serve(settings)
    assert sources(next_container()) == ["HIT-DISK"]  # the bad entry was replaced by the good answer


class FlakyEngine(WrappedEngine):
    """The real engine whose first generation fails: the fault injected."""

    def __init__(self, real) -> None:
        super().__init__(real)
        self.failed = False

    def submit(self, tokens, params, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected fault")
        return super().submit(tokens, params, **kwargs)


def test_errors_are_never_stored(settings: Settings, serve, tmp_path: Path, tiny_model: Path) -> None:
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: FlakyEngine(load_engine(s))))
    with LiveServer(app) as server:
        failed = httpx.post(f"{server.url}/chat", json={"prompt": "hello"})
        again = httpx.post(f"{server.url}/chat", json={"prompt": "hello"})
    assert failed.status_code == 500
    assert again.status_code == 200 and again.headers["x-cache"] == "MISS"
    assert app.state.chat.cache.stats()["memory"]["entries"] == 1


def test_concurrent_misses_are_all_counted() -> None:
    cache = ResponseCache([])  # counting needs no tier
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between the read and the write of an unlocked count
    try:
        workers = [threading.Thread(target=lambda: [cache.count_miss() for _ in range(1000)]) for _ in range(50)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    assert cache.misses == 50_000


def test_the_services_count_their_misses_through_the_cache(settings: Settings, serve) -> None:
    """The count is the cache's own: read-only outside, so no service bumps it unlocked."""
    app, ask = serve(settings)
    ask("counted once")
    url = str(ask("counted once").url).replace("/chat", "/v1/embeddings")
    assert httpx.post(url, json={"model": "tiny", "input": ["one", "two", "one"]}, timeout=60).status_code == 200
    assert app.state.chat.cache.stats()["misses"] == 3  # the chat miss, then two distinct inputs
    with pytest.raises(AttributeError):
        app.state.chat.cache.misses = 0
