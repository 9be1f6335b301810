"""The Mangum entry point answers the payloads API Gateway, function URLs and ALB really send."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from mangum import Mangum

from tests.conftest import FakeLambdaContext, lambda_body, lambda_event

KINDS = ["apigw-http-v2", "apigw-rest-v1", "function-url", "alb"]


@pytest.fixture
def handler(app: FastAPI) -> Mangum:
    return Mangum(app, lifespan="off")


@pytest.mark.parametrize("kind", KINDS)
def test_chat_through_each_event_kind_matches_http(kind: str, handler: Mangum, app: FastAPI, live_server) -> None:
    request = {"prompt": "Tell me a rhyme", "max_tokens": 8}
    response = handler(lambda_event(kind, request), FakeLambdaContext("req-" + kind))
    assert response["statusCode"] == 200, response
    with httpx.Client(base_url=live_server(app).url) as http:
        expected = http.post("/chat", json=request).json()
    assert lambda_body(response) == expected
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    if "multiValueHeaders" in response and "x-request-id" not in headers:
        headers = {k.lower(): v[0] for k, v in response["multiValueHeaders"].items()}
    assert headers["x-request-id"] == "req-" + kind  # the invocation's own id


@pytest.mark.parametrize("kind", KINDS)
def test_health_and_bad_request_through_each_event_kind(kind: str, handler: Mangum) -> None:
    health = handler(lambda_event(kind, "", path="/health", method="GET"), FakeLambdaContext())
    assert health["statusCode"] == 200
    assert lambda_body(health)["status"] == "ok"
    bad = handler(lambda_event(kind, {"prompt": ""}), FakeLambdaContext("bad-1"))
    assert bad["statusCode"] == 422
    body = lambda_body(bad)
    assert body["error"]["fields"][0]["field"] == "prompt"
    assert body["error"]["request_id"] == "bad-1"


def test_plain_text_body_is_accepted_too(handler: Mangum) -> None:
    event = lambda_event("apigw-http-v2", {"prompt": "plain", "max_tokens": 3})
    import base64

    event["body"] = base64.b64decode(event["body"]).decode()
    event["isBase64Encoded"] = False
    assert handler(event, FakeLambdaContext())["statusCode"] == 200
