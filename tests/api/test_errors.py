"""Bad input is the caller's 4xx with a message; a fault inside is a 5xx that leaks nothing."""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import WrappedEngine


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "prompt", "Field required"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   \n"}, "prompt", "not only whitespace"),
        ({"prompt": 42}, "prompt", "valid string"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"prompt": "hi", "max_tokens": "10"}, "max_tokens", "valid integer"),
        ({"prompt": "hi", "max_token": 10}, "max_token", "Extra inputs are not permitted"),
    ],
)
def test_invalid_requests_get_422_with_field_messages(http: httpx.Client, body: dict, field: str, message: str) -> None:
    response = http.post("/chat", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert {"field": field, "message": error["fields"][0]["message"]} == error["fields"][0]
    assert error["fields"][0]["field"] == field
    assert message in error["fields"][0]["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_malformed_json_is_422(http: httpx.Client) -> None:
    response = http.post("/chat", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


def test_max_tokens_above_limit_is_400_naming_the_limit(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "hi", "max_tokens": settings.max_tokens_limit + 1})
    assert response.status_code == 400
    assert str(settings.max_tokens_limit) in response.json()["error"]["message"]


def test_context_overflow_is_400_with_the_numbers(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "x" * 400, "max_tokens": 200})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "context_length_exceeded"
    assert "max_tokens is 200" in error["message"] and f"context of {settings.n_ctx} tokens" in error["message"]


def test_missing_model_is_503_then_recovers_when_the_file_appears(
    settings: Settings, tiny_model: Path, tmp_path: Path, live_server
) -> None:
    missing = tmp_path / "later.gguf"
    app = create_app(settings.model_copy(update={"model_path": str(missing)}))
    with httpx.Client(base_url=live_server(app).url) as http:
        first = http.post("/chat", json={"prompt": "hi", "max_tokens": 3})
        assert first.status_code == 503
        error = first.json()["error"]
        assert error["type"] == "model_unavailable"
        assert str(missing) not in first.text and "later.gguf" not in first.text
        assert http.get("/health").json()["model"]["loaded"] is False
        shutil.copy(tiny_model, missing)
        assert http.post("/chat", json={"prompt": "hi", "max_tokens": 3}).status_code == 200


@pytest.mark.parametrize("content", [b"not a model at all", None], ids=["not-gguf", "truncated-gguf"])
def test_corrupt_model_is_503(settings: Settings, tiny_model: Path, tmp_path: Path, live_server, content) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content if content is not None else tiny_model.read_bytes()[:4096])
    app = create_app(settings.model_copy(update={"model_path": str(bad)}))
    with httpx.Client(base_url=live_server(app).url) as http:
        response = http.post("/chat", json={"prompt": "hi", "max_tokens": 3})
    assert response.status_code == 503
    assert "bad.gguf" not in response.text


class ExplodingEngine(WrappedEngine):
    """The real engine failing inside generation: the one fault a fake is for."""

    def submit(self, tokens, params, **kwargs):
        failed: Future[Any] = Future()
        failed.set_exception(RuntimeError("ggml_abort at /secret/path/llama.cpp:1234"))
        return failed


def test_generation_fault_is_500_with_request_id_and_no_internals(settings: Settings, live_server) -> None:
    model = ModelHolder(settings, loader=lambda s: ExplodingEngine(load_engine(s)))
    app = create_app(settings, model=model)
    with httpx.Client(base_url=live_server(app).url) as http:
        response = http.post("/chat", json={"prompt": "hi", "max_tokens": 3}, headers={"x-request-id": "trace-42"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["type"] == "generation_failed"
    assert body["error"]["request_id"] == "trace-42"
    for leak in ("secret", "ggml", "Traceback", "llama.cpp:1234"):
        assert leak not in response.text


def test_unknown_route_is_json_404(http: httpx.Client) -> None:
    response = http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "http_error"


def test_oversized_body_is_413_in_the_service_error_shape(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "x" * (settings.max_body_bytes + 10)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "body_too_large" and str(settings.max_body_bytes) in error["message"]


def test_oversized_body_without_content_length_is_413_through_mangum(app) -> None:
    from mangum import Mangum

    from tests.conftest import FakeLambdaContext, lambda_body, lambda_event

    event = lambda_event("apigw-http-v2", {"prompt": "x" * (app.state.settings.max_body_bytes + 10)})
    response = Mangum(app, lifespan="off")(event, FakeLambdaContext())
    assert response["statusCode"] == 413
    assert lambda_body(response)["error"]["type"] == "body_too_large"


def test_prompt_over_the_limit_is_400_naming_it(settings: Settings, live_server) -> None:
    app = create_app(settings.model_copy(update={"max_prompt_chars": 50}))
    with httpx.Client(base_url=live_server(app).url) as http:
        response = http.post("/chat", json={"prompt": "y" * 51})
    assert response.status_code == 400
    assert (
        "51 characters" in response.json()["error"]["message"] and "limit of 50" in response.json()["error"]["message"]
    )


def test_non_utf8_body_is_4xx(http: httpx.Client) -> None:
    response = http.post("/chat", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["request_id"]


def test_a_lone_surrogate_in_model_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions",
        content='{"model": "\\ud800", "prompt": "x", "max_tokens": 2}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
