"""A generation that would outrun its deadline stops, says so, and is not cached."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from mangum import Mangum

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import FakeLambdaContext, LiveServer, PacedEngine, lambda_body, lambda_event


def slow_app(settings: Settings, **update) -> object:
    settings = settings.model_copy(update=update)
    return create_app(settings, model=ModelHolder(settings, loader=lambda s: PacedEngine(load_engine(s))))


def test_timeout_stops_the_generation_says_so_and_is_not_cached(settings: Settings) -> None:
    app = slow_app(settings, generation_timeout_seconds=0.2)
    with LiveServer(app) as server:
        body = {"prompt": "a long story", "max_tokens": 200}
        first = httpx.post(f"{server.url}/chat", json=body, timeout=30)
        second = httpx.post(f"{server.url}/chat", json=body, timeout=30)
    assert first.status_code == 200
    assert first.headers["x-finish-reason"] == "time_limit"
    assert [first.headers["x-cache"], second.headers["x-cache"]] == ["MISS", "MISS"]
    assert app.state.chat.cache.stats()["memory"]["entries"] == 0


def test_a_finished_answer_says_why_it_stopped(http: httpx.Client) -> None:
    response = http.post("/chat", json={"prompt": "hi", "max_tokens": 3})
    assert response.headers["x-finish-reason"] in {"stop", "length"}


class ShortInvocation(FakeLambdaContext):
    def get_remaining_time_in_millis(self) -> int:
        return 2300  # 0.3 s left once the 2 s margin to answer is kept


def test_a_function_invocation_stops_within_its_remaining_time(settings: Settings) -> None:
    app = slow_app(settings, generation_timeout_seconds=None)
    handler = Mangum(app, lifespan="off")
    response = handler(lambda_event("function-url", {"prompt": "a long story", "max_tokens": 200}), ShortInvocation())
    assert response["statusCode"] == 200 and lambda_body(response)["text"] is not None
    assert response["headers"]["x-finish-reason"] == "time_limit"
    roomy = handler(lambda_event("function-url", {"prompt": "short", "max_tokens": 3}), FakeLambdaContext())
    assert roomy["headers"]["x-finish-reason"] in {"stop", "length"}


def test_behind_the_web_adapter_the_invocations_deadline_and_request_id_apply(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter forwards Lambda's context as the x-amzn-lambda-context header; only inside Lambda is it
    believed (elsewhere any client could send it)."""
    app = slow_app(settings, generation_timeout_seconds=None)
    body = {"prompt": "a long story", "max_tokens": 200}

    def forwarded() -> dict[str, str]:
        context = {"request_id": "8476a536-e9f4-11e8-9739-2dfe598c3fcd", "deadline": time.time() * 1000 + 2300}
        return {"x-amzn-lambda-context": json.dumps(context)}

    with LiveServer(app) as server:
        outside = httpx.post(f"{server.url}/chat", json=body, headers=forwarded(), timeout=60)
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat")
        inside = httpx.post(f"{server.url}/chat", json={**body, "cache": "off"}, headers=forwarded(), timeout=60)
    assert outside.headers["x-finish-reason"] == "length"
    assert outside.headers["x-request-id"] != "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    assert inside.headers["x-finish-reason"] == "time_limit"
    assert inside.headers["x-request-id"] == "8476a536-e9f4-11e8-9739-2dfe598c3fcd"


def test_a_request_that_joins_a_generation_keeps_its_own_deadline(settings: Settings) -> None:
    """Identical requests share one generation, but not its deadline: one with more time does not get the
    answer the first one's deadline cut short, and one with less time answers by its own deadline."""
    from handler.cache.policy import CachePolicy
    from handler.core.types import ModelInput

    app = slow_app(settings, generation_timeout_seconds=None)
    service = app.state.chat
    prompt, params = ModelInput.text("a long story"), service.params_for(60)

    async def together(first: float | None, second: float | None) -> list[Any]:
        now = time.monotonic()
        leader = asyncio.create_task(service.answer(prompt, params, CachePolicy(store=False), first and now + first))
        while service.flights.in_flight == 0:  # the second joins the first's generation
            await asyncio.sleep(0.005)
        follower = asyncio.create_task(
            service.answer(prompt, params, CachePolicy(store=False), second and now + second)
        )
        return [await leader, await follower]

    cut, whole = asyncio.run(together(0.3, None))
    assert cut.completion.finish_reason == "time_limit"
    assert whole.completion.finish_reason != "time_limit" and whole.completion.completion_tokens == 60

    started = time.monotonic()
    slow, hurried = asyncio.run(together(None, 0.3))
    assert hurried.completion.finish_reason == "time_limit" and hurried.shared
    assert slow.completion.completion_tokens == 60
    assert time.monotonic() - started > 0.3


def test_plain_requests_fill_every_parallel_sequence(settings: Settings) -> None:
    """Not only streams: 8 distinct concurrent /chat requests decode together, 8 sequences at once."""
    from concurrent.futures import ThreadPoolExecutor

    # Each request reserves its prompt (the template's ~60 byte tokens) and max_tokens: room for all 8.
    app = slow_app(settings, generation_timeout_seconds=None, n_parallel=8, n_ctx=1024)
    busiest = 0
    with LiveServer(app) as server, ThreadPoolExecutor(8) as pool:
        asks = [
            pool.submit(httpx.post, f"{server.url}/chat", json={"prompt": f"story {i}", "max_tokens": 40}, timeout=60)
            for i in range(8)
        ]
        while not all(a.done() for a in asks):
            engine = app.state.model.engine
            busiest = max(busiest, engine.stats().active if engine is not None else 0)
            time.sleep(0.005)
        assert all(a.result().status_code == 200 for a in asks)
    assert busiest == 8


def test_a_stream_given_up_before_its_first_piece_stops_its_generation(settings: Settings) -> None:
    from handler.cache.policy import CachePolicy
    from handler.core.types import ModelInput

    made: list[PacedEngine] = []

    def slow_loader(s: Any) -> PacedEngine:
        time.sleep(0.5)  # the request is given up while the model loads
        made.append(PacedEngine(load_engine(s)))
        return made[-1]

    app = create_app(settings, model=ModelHolder(settings, loader=slow_loader))
    service = app.state.chat

    async def give_up() -> None:
        task = asyncio.create_task(
            service.stream(ModelInput.text("a long story"), service.params_for(300), CachePolicy())
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while service.pending and time.monotonic() < deadline:  # the loop stays up for the stream's thread
            await asyncio.sleep(0.01)

    asyncio.run(give_up())
    assert service.pending == 0  # the generation ended: nobody was left to read it
    assert made and made[0].tokens < 10


def test_a_request_that_makes_its_own_answer_after_a_cut_short_one_counts_against_the_limit(
    settings: Settings,
) -> None:
    """The request that joined a generation its starter's deadline cut short generates again, as one of
    `max_pending_generations`: counted while it runs, and a distinct request meanwhile is refused."""
    from handler.cache.policy import CachePolicy
    from handler.core.errors import Busy
    from handler.core.types import ModelInput

    app = slow_app(settings, generation_timeout_seconds=None, max_pending_generations=1)
    service = app.state.chat
    prompt, params = ModelInput.text("a long story"), service.params_for(60)

    async def cut_then_own() -> tuple[Any, int, bool]:
        now = time.monotonic()
        leader = asyncio.create_task(service.answer(prompt, params, CachePolicy(store=False), now + 0.3))
        while service.flights.in_flight == 0:
            await asyncio.sleep(0.005)
        follower = asyncio.create_task(service.answer(prompt, params, CachePolicy(store=False)))
        cut = await leader
        assert cut.completion.finish_reason == "time_limit"
        await asyncio.sleep(0.2)  # the follower is making its own answer now
        pending = service.pending
        try:
            await service.answer(ModelInput.text("another story"), params, CachePolicy(store=False))
            refused = False
        except Busy:
            refused = True
        return await follower, pending, refused

    whole, pending, refused = asyncio.run(cut_then_own())
    assert whole.completion.completion_tokens == 60
    assert pending == 1
    assert refused
