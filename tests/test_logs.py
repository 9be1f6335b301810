"""One JSON log line per request; no user text in it unless the operator asks."""

from __future__ import annotations

import io

import httpx
import pytest

from handler.app import create_app
from handler.config import Settings
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
