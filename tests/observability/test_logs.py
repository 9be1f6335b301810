"""One JSON log line per request; no user text in it unless the operator asks."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import httpx
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from handler.observability.logs import JsonFormatter, RequestIdFilter
from tests.conftest import LiveServer, lines

SECRET_PROMPT = "my account number is 1234-5678"


@pytest.mark.parametrize("keep", [False, True])
def test_request_line_has_the_facts_and_prompts_only_when_configured(
    settings: Settings, access_log: io.StringIO, keep: bool
) -> None:
    app = create_app(settings.model_copy(update={"log_prompts": keep}))
    with LiveServer(app) as server:
        response = httpx.post(f"{server.url}/chat", json={"prompt": SECRET_PROMPT, "max_tokens": 3})
        httpx.post(f"{server.url}/chat", json={"prompt": 5})  # a bad request is logged too
    (line, bad) = lines(access_log)
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["route"], line["status"], line["cache"]) == ("/chat", 200, "MISS")
    assert line["prompt_tokens"] > 0 and line["latency_ms"] > 0
    assert bad["status"] == 422
    assert (SECRET_PROMPT in access_log.getvalue()) is keep


def test_every_line_logged_while_answering_carries_the_request_id(settings: Settings, tmp_path: Path) -> None:
    """The model-load line (on the model's thread) and a cache warning (on a worker thread), not only the
    access line."""
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("handler")
    logger.addHandler(handler)
    app = create_app(settings.model_copy(update={"cache_dir": str(blocked / "cache"), "log_level": "INFO"}))
    try:
        with LiveServer(app) as server:
            response = httpx.post(
                f"{server.url}/chat",
                json={"prompt": "which request?", "max_tokens": 3},
                headers={"X-Request-Id": "req-42"},
            )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200
    logged = {line["message"]: line for line in lines(stream)}
    assert "model loaded" in logged and "request" in logged
    assert any("disk cache" in message for message in logged)
    assert {line.get("request_id") for line in logged.values()} == {"req-42"}
