"""Behind API Gateway a generation ends before the gateway's 30 s integration timeout, whatever time the
function has left: a request it cut off would be the gateway's 503, not the service's time_limit answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from mangum import Mangum

from handler.api.common import GATEWAY_INTEGRATION_MS, gateway_remaining_ms
from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import FakeLambdaContext, PacedEngine, lambda_body, lambda_event

GATEWAY_EVENTS = ["apigw-http-v2", "apigw-rest-v1"]
DIRECT_EVENTS = ["function-url", "alb"]


def received(event: dict[str, Any], ms_ago: float) -> dict[str, Any]:
    """The event as if the gateway had received its request `ms_ago` ms ago (v2 timeEpoch, v1 requestTimeEpoch)."""
    context = event["requestContext"]
    key = "timeEpoch" if "timeEpoch" in context else "requestTimeEpoch"
    context[key] = int(time.time() * 1000 - ms_ago)
    return event


def generation_time_left(settings: Settings, monkeypatch: pytest.MonkeyPatch, event: dict[str, Any]) -> float:
    """Seconds the route gave its generation, for one /chat invocation with 60 s left in the Lambda context."""
    app = create_app(settings.model_copy(update={"generation_timeout_seconds": None}))
    service = app.state.chat
    seen: list[float] = []
    real = service.deadline

    def spy(remaining_ms: int | None) -> float | None:
        deadline = real(remaining_ms)
        assert deadline is not None
        seen.append(deadline - time.monotonic())
        return deadline

    monkeypatch.setattr(service, "deadline", spy)
    response = Mangum(app, lifespan="off")(event, FakeLambdaContext())
    assert response["statusCode"] == 200, response
    (left,) = seen
    return left


@pytest.mark.parametrize("kind", GATEWAY_EVENTS)
def test_through_api_gateway_the_generation_ends_before_the_gateways_timeout(
    kind: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = received(lambda_event(kind, {"prompt": "hi", "max_tokens": 2}), ms_ago=0)
    left = generation_time_left(settings, monkeypatch, event)
    assert 26 < left < 28  # 29 s less the 2 s margin to answer, though the context says 60 s remain


@pytest.mark.parametrize("kind", GATEWAY_EVENTS)
def test_the_time_the_request_spent_before_the_function_counts(
    kind: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = received(lambda_event(kind, {"prompt": "hi", "max_tokens": 2}), ms_ago=10_000)
    left = generation_time_left(settings, monkeypatch, event)
    assert 16 < left < 17  # 29 - 10 - 2


@pytest.mark.parametrize("kind", DIRECT_EVENTS)
def test_a_function_url_or_alb_keeps_the_invocations_own_time(
    kind: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = generation_time_left(settings, monkeypatch, lambda_event(kind, {"prompt": "hi", "max_tokens": 2}))
    assert 57 < left <= 58  # the context's 60 s less the 2 s margin


def test_a_gateway_request_that_used_up_its_time_answers_time_limit(settings: Settings) -> None:
    """26.7 s spent before the function: 0.3 s are left to generate. A function URL with the same 60 s
    context and the same receipt time generates on."""
    settings = settings.model_copy(update={"generation_timeout_seconds": None})
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: PacedEngine(load_engine(s))))
    handler = Mangum(app, lifespan="off")
    body = {"prompt": "a long story", "max_tokens": 200, "cache": "off"}
    started = time.monotonic()
    late = handler(received(lambda_event("apigw-http-v2", body), ms_ago=26_700), FakeLambdaContext())
    assert time.monotonic() - started < 10  # 200 paced tokens take 4 s and more; the model loads too
    assert late["statusCode"] == 200 and lambda_body(late)["text"] is not None
    assert late["headers"]["x-finish-reason"] == "time_limit"
    direct = received(lambda_event("function-url", {**body, "max_tokens": 3}), ms_ago=26_700)
    assert handler(direct, FakeLambdaContext())["headers"]["x-finish-reason"] in {"stop", "length"}


def test_which_events_came_through_the_gateway_and_when() -> None:
    now = 1_700_000_000_000.0
    http_api = lambda_event("apigw-http-v2", "{}")
    http_api["requestContext"]["timeEpoch"] = now - 1_500
    assert gateway_remaining_ms(http_api, now_ms=now) == GATEWAY_INTEGRATION_MS - 1_500
    rest = lambda_event("apigw-rest-v1", "{}")
    rest["requestContext"]["requestTimeEpoch"] = now - 2_000
    assert gateway_remaining_ms(rest, now_ms=now) == GATEWAY_INTEGRATION_MS - 2_000
    # A receipt time from another clock or a replayed event (the shipped files are from 2020 and 2015),
    # or none at all: the whole timeout, counted from now.
    for stale in (now + 5_000, now - 40_000, None, "soon"):
        http_api["requestContext"]["timeEpoch"] = stale
        assert gateway_remaining_ms(http_api, now_ms=now) == GATEWAY_INTEGRATION_MS
    assert gateway_remaining_ms(lambda_event("apigw-http-v2", "{}")) == GATEWAY_INTEGRATION_MS
    for direct in DIRECT_EVENTS:
        assert gateway_remaining_ms(lambda_event(direct, "{}"), now_ms=now) is None
    assert gateway_remaining_ms(None) is None and gateway_remaining_ms({"requestContext": "x"}) is None
