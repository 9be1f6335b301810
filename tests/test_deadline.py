"""A generation that would outrun its deadline stops, says so, and is not cached."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from mangum import Mangum

from handler.app import create_app
from handler.core.config import Settings
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
