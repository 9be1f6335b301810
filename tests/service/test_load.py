"""Under load: a bounded queue answers 429 rather than hang, and no answer is ever wrong.

Bounded: 64 clients x 3 requests (a 429 is retried after 50 ms, for at most 60 s), joined within 120 s.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from handler.service.prompts import template_input
from tests.conftest import LiveServer, WrappedEngine

CLIENTS, REQUESTS_EACH, MAX_TOKENS = 64, 3, 8


class SteadyEngine(WrappedEngine):
    """The real engine, 30 ms slower a generation, so that the queue fills: a delay injected."""

    def submit(self, tokens, params, **kwargs):
        time.sleep(0.03)
        return super().submit(tokens, params, **kwargs)


def test_64_concurrent_clients_get_right_answers_or_429(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_pending_generations": 4})
    repeated = [f"popular question {i}" for i in range(6)]
    rng = random.Random(7)
    plan = [
        [rng.choice(repeated) if rng.random() < 0.6 else f"new question {c}-{r}" for r in range(REQUESTS_EACH)]
        for c in range(CLIENTS)
    ]
    reference_model = ModelHolder(settings)
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: SteadyEngine(load_engine(s))))
    app_params = app.state.chat.params_for(MAX_TOKENS)

    def reference(prompt: str) -> str:
        model_input = template_input(settings, prompt)
        return reference_model.generate(model_input, model_input.with_stops(app_params)).text.strip()

    expected = {p: reference(p) for p in {p for row in plan for p in row}}

    outcomes: list[tuple[str, int, str, dict]] = []
    lock = threading.Lock()
    with LiveServer(app) as server:

        def client(prompts: list[str]) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                give_up = time.monotonic() + 60
                for prompt in prompts:
                    while time.monotonic() < give_up:  # a polite client: back off on 429, then try again
                        r = http.post("/chat", json={"prompt": prompt, "max_tokens": MAX_TOKENS})
                        with lock:
                            outcomes.append((prompt, r.status_code, r.text, dict(r.headers)))
                        if r.status_code != 429:
                            break
                        time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(row,), daemon=True) for row in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not [t for t in threads if t.is_alive()], "a client hung"

        statuses = {status for _, status, _, _ in outcomes}
        assert statuses <= {200, 429}, statuses
        for prompt, status, text, headers in outcomes:
            if status == 200:
                assert httpx.Response(200, text=text).json() == {"text": expected[prompt]}, prompt
            else:
                assert headers["retry-after"] == "2" and '"busy"' in text
        assert sum(status == 200 for _, status, _, _ in outcomes) == CLIENTS * REQUESTS_EACH  # all, in the end

        # Nothing wrong was stored: every prompt now answers correctly, from the cache where it was kept.
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for prompt, answer in expected.items():
                r = http.post("/chat", json={"prompt": prompt, "max_tokens": MAX_TOKENS})
                assert r.status_code == 200 and r.json() == {"text": answer}
            assert http.get("/health").json()["status"] == "ok"


def test_a_full_queue_refuses_new_work_with_429_but_lets_identical_requests_join(settings: Settings) -> None:
    class Slow(WrappedEngine):
        def submit(self, tokens, params, **kwargs):
            time.sleep(0.5)
            return super().submit(tokens, params, **kwargs)

    settings = settings.model_copy(update={"max_pending_generations": 1})
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: Slow(load_engine(s))))
    results: dict[str, httpx.Response] = {}
    with LiveServer(app) as server:

        def ask(name: str, prompt: str) -> None:
            results[name] = httpx.post(f"{server.url}/chat", json={"prompt": prompt, "max_tokens": 4}, timeout=30)

        first = threading.Thread(target=ask, args=("first", "one"))
        first.start()
        deadline = time.monotonic() + 10
        while app.state.chat.flights.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        twin = threading.Thread(target=ask, args=("twin", "one"))
        twin.start()
        ask("other", "two")
        first.join(30)
        twin.join(30)
    assert results["other"].status_code == 429
    assert results["other"].headers["retry-after"] == "2"
    assert results["other"].json()["error"]["type"] == "busy"
    assert results["first"].status_code == results["twin"].status_code == 200
    assert results["first"].json() == results["twin"].json()
    assert app.state.model.generations == 1


class NotingEvent(threading.Event):
    """A request's cancel flag, which the engine reads at every decoding step: it notes the thread."""

    def __init__(self, inner: threading.Event | None, threads: set[str]) -> None:
        super().__init__()
        self.inner, self.threads = inner, threads

    def is_set(self) -> bool:
        self.threads.add(threading.current_thread().name)
        return self.inner is not None and self.inner.is_set()


class ThreadNotingEngine(WrappedEngine):
    """The real engine, noting which threads run its decoding steps."""

    def __init__(self, real: Any, threads: set[str]) -> None:
        super().__init__(real)
        self.threads = threads

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Any:
        kwargs["cancelled"] = NotingEvent(kwargs.get("cancelled"), self.threads)
        return super().submit(tokens, params, **kwargs)


def test_every_generation_decodes_on_the_one_engine_thread(settings: Settings) -> None:
    """llama.cpp's OpenMP keeps a worker pool per calling thread, and a second pool makes every token sleep
    at its barriers (handler/engine/threads.py): concurrent requests on every route, streams too, decode on
    the scheduler's one thread."""
    threads: set[str] = set()

    def loader(s: Any) -> ThreadNotingEngine:
        return ThreadNotingEngine(load_engine(s), threads)

    app = create_app(settings, model=ModelHolder(settings, loader=loader))
    model = settings.served_model
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:

        def ask(i: int) -> int:
            if i % 3 == 0:
                return http.post("/chat", json={"prompt": f"question {i}", "max_tokens": 8}).status_code
            if i % 3 == 1:
                body = {"model": model, "prompt": f"question {i}", "max_tokens": 8, "stream": True}
                with http.stream("POST", "/v1/completions", json=body) as r:
                    assert "data: [DONE]" in r.read().decode()
                    return r.status_code
            body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8}
            return http.post("/v1/chat/completions", json=body).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(ask, range(24)))
    assert statuses == [200] * 24
    assert app.state.model.generations == 24
    assert threads == {"llama-scheduler"}
