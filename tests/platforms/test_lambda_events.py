"""The Mangum entry point answers the payloads API Gateway, function URLs and ALB really send, and a 400 to
an event it cannot read."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from handler.lambda_adapter import LambdaAdapter
from tests.conftest import FakeLambdaContext, lambda_body, lambda_event

ROOT = Path(__file__).resolve().parents[2]

KINDS = ["apigw-http-v2", "apigw-rest-v1", "function-url", "alb"]


@pytest.fixture
def handler(app: FastAPI) -> LambdaAdapter:
    return LambdaAdapter(app, lifespan="off")


@pytest.mark.parametrize("kind", KINDS)
def test_chat_through_each_event_kind_matches_http(
    kind: str, handler: LambdaAdapter, app: FastAPI, live_server
) -> None:
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
def test_health_and_bad_request_through_each_event_kind(kind: str, handler: LambdaAdapter) -> None:
    health = handler(lambda_event(kind, "", path="/health", method="GET"), FakeLambdaContext())
    assert health["statusCode"] == 200
    assert lambda_body(health)["status"] == "ok"
    bad = handler(lambda_event(kind, {"prompt": ""}), FakeLambdaContext("bad-1"))
    assert bad["statusCode"] == 422
    body = lambda_body(bad)
    assert body["error"]["fields"][0]["field"] == "prompt"
    assert body["error"]["request_id"] == "bad-1"


def test_plain_text_body_is_accepted_too(handler: LambdaAdapter) -> None:
    event = lambda_event("apigw-http-v2", {"prompt": "plain", "max_tokens": 3})
    import base64

    event["body"] = base64.b64decode(event["body"]).decode()
    event["isBase64Encoded"] = False
    assert handler(event, FakeLambdaContext())["statusCode"] == 200


SENTINEL = "sentinel-8d1c"  # in every malformed event's header and prompt: the log must not show it
Change = Callable[[dict[str, Any]], object]
MALFORMED: list[tuple[str, str, Change]] = [
    *[(kind, "invalid-base64", lambda e: e.update(body="abc", isBase64Encoded=True)) for kind in KINDS],
    *[(kind, "no-requestContext", lambda e: e.pop("requestContext")) for kind in KINDS],
    *[(kind, "headers-null", lambda e: e.update(headers=None)) for kind in ("apigw-http-v2", "function-url", "alb")],
    *[(kind, "cookie-null", lambda e: e.update(cookies=["a=b", None])) for kind in ("apigw-http-v2", "function-url")],
    *[(kind, "no-path", lambda e: e.pop("path")) for kind in ("apigw-rest-v1", "alb")],
    *[(kind, "header-not-text", lambda e: e["headers"].update({"x-n": 1})) for kind in KINDS],
    *[(kind, "body-not-text", lambda e: e.update(body={"prompt": "hi"}, isBase64Encoded=False)) for kind in KINDS],
    ("apigw-rest-v1", "method-null", lambda e: e.update(httpMethod=None)),
    ("apigw-http-v2", "method-null", lambda e: e["requestContext"]["http"].update(method=None)),
]


@pytest.fixture
def warnings() -> Iterator[list[logging.LogRecord]]:
    """The records the Lambda adapter logs."""
    records: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("handler.lambda")
    logger.addHandler(capture)
    yield records
    logger.removeHandler(capture)


def assert_bad_event(response: dict[str, Any], request_id: str) -> None:
    assert response["statusCode"] == 400
    assert response["headers"]["content-type"] == "application/json"
    error = json.loads(response["body"])["error"]
    assert error["type"] == "bad_request" and error["request_id"] == request_id
    assert set(error) == {"type", "message", "request_id"} and error["message"]


@pytest.mark.parametrize(
    ("kind", "change"), [(k, c) for k, _, c in MALFORMED], ids=[f"{k}-{n}" for k, n, _ in MALFORMED]
)
def test_a_malformed_event_gets_a_400_and_one_warning_without_its_content(
    kind: str, change: Change, handler: LambdaAdapter, warnings: list[logging.LogRecord]
) -> None:
    event = lambda_event(kind, {"prompt": SENTINEL, "max_tokens": 2}, headers={"x-tag": SENTINEL})
    change(event)
    assert_bad_event(handler(event, FakeLambdaContext("bad-event-1")), "bad-event-1")
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert SENTINEL not in json.dumps(warnings[0].__dict__, default=str)
    assert warnings[0].request_id == "bad-event-1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "event", [{}, [], None, "chat", 3, {"requestContext": None}, {"Records": []}, {"version": "2.0"}], ids=repr
)
def test_an_unknown_event_shape_gets_a_400(event: object, handler: LambdaAdapter) -> None:
    assert_bad_event(handler(event, FakeLambdaContext("unknown-1")), "unknown-1")  # type: ignore[arg-type]


def test_the_entry_point_answers_a_malformed_event_400(tiny_model: Path, tmp_path: Path) -> None:
    """`handler.lambda_handler.handler` itself, in a process of its own (it builds its app at import)."""
    script = (
        "import json\n"
        "from handler.lambda_handler import handler\n"
        "from tests.helpers.lambda_events import FakeLambdaContext, lambda_event\n"
        "bad = lambda_event('apigw-http-v2', {'prompt': 'hi'})\n"
        "bad['body'] = 'abc'\n"
        "print(json.dumps([handler(bad, FakeLambdaContext('entry-1')), handler({}, FakeLambdaContext('entry-2'))]))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA_")},
        "PYTHONPATH": str(ROOT),
        "CHAT_MODEL_PATH": str(tiny_model),
        "CHAT_MODEL_SHA256": "",
        "CHAT_CACHE_DIR": str(tmp_path / "cache"),
        "CHAT_LOG_LEVEL": "WARNING",
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    first, second = json.loads(lines[-1])
    assert_bad_event(first, "entry-1")
    assert_bad_event(second, "entry-2")
    logged = [json.loads(line) for line in lines[:-1]]
    assert [(line["level"], line["request_id"]) for line in logged if line["logger"] == "handler.lambda"] == [
        ("WARNING", "entry-1"),
        ("WARNING", "entry-2"),
    ]
