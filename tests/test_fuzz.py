"""Property-based fuzzing of POST /chat over real HTTP: whatever the body, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from handler.app import create_app
from handler.core.config import Settings
from tests.conftest import LiveServer

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
SHAPED = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=300), JSON)},
    optional={
        "max_tokens": st.one_of(st.integers(-5, 2000), JSON),
        "cache": st.one_of(st.sampled_from(["default", "no-cache", "no-store", "off", "bogus"]), JSON),
        "extra": JSON,
    },
)
CHAT_SHAPED = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny", "gpt-4o", ""]) | JSON,
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"]) | JSON,
                    "content": st.text(max_size=200)
                    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}), max_size=2)
                    | JSON,
                }
            ),
            max_size=3,
        )
        | JSON,
    },
    optional={
        "max_tokens": st.integers(-5, 2000) | JSON,
        "temperature": st.floats(-1, 3) | JSON,
        "stop": st.lists(st.text(max_size=5), max_size=6) | JSON,
        "seed": st.integers(-1, 2**33) | JSON,
        "stream": st.booleans() | JSON,
        "n": st.integers(0, 3) | JSON,
        "logprobs": JSON,
        "extra": JSON,
    },
)
FUZZ = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Iterator[httpx.Client]:
    settings = Settings(
        model_path=str(tiny_model),
        n_ctx=512,
        n_gpu_layers=0,
        n_threads=1,
        cache_dir=str(tmp_path_factory.mktemp("fuzz-cache")),
        log_level="ERROR",
    )
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


def answer_text(body: dict) -> object:
    """/chat's text, a completion's text or a chat completion's message content."""
    if "text" in body:
        return body["text"]
    choice = body["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
        return
    body = response.json()
    if response.status_code == 200:
        assert isinstance(answer_text(body), str)
    else:
        assert body["error"]["message"] and body["error"]["request_id"]


@FUZZ
@given(body=SHAPED)
def test_schema_shaped_bodies_never_5xx(server: httpx.Client, body: dict) -> None:
    check(server.post("/chat", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(body=CHAT_SHAPED)
def test_chat_completion_shaped_bodies_never_5xx(server: httpx.Client, body: dict) -> None:
    check(server.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(body=JSON)
def test_any_json_never_5xx(server: httpx.Client, body: object) -> None:
    check(server.post("/chat", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_any_bytes_never_5xx(server: httpx.Client, raw: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check(server.post("/chat", content=raw, headers=headers))


@pytest.mark.parametrize("prompt_json", ['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\ud83d\\ude00 ok"'])
def test_escaped_surrogates_and_nul_never_5xx(server: httpx.Client, prompt_json: str) -> None:
    for path, body in [
        ("/v1/completions", f'{{"model": "tiny", "max_tokens": 3, "prompt": {prompt_json}}}'),
        (
            "/v1/chat/completions",
            f'{{"model": "tiny", "max_tokens": 3, "stream": true, '
            f'"messages": [{{"role": "user", "content": {prompt_json}}}]}}',
        ),
    ]:
        check(server.post(path, content=body, headers={"content-type": "application/json"}))
    check(
        server.post(
            "/chat",
            content=f'{{"prompt": {prompt_json}, "max_tokens": 4}}',
            headers={"content-type": "application/json"},
        )
    )
