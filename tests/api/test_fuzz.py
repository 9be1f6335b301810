"""Property-based fuzzing over real HTTP: whatever the body, of /chat or any other route, never a 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from handler.app import create_app
from handler.core.settings import Settings
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


# Every string field of every route, in a body that is otherwise valid, so a nasty value gets as deep as
# it can. A path's last part `KEY` puts the string in as a key of the object the path leads to.
KEY = object()
VALID: dict[str, dict] = {
    "/chat": {"prompt": "hi", "max_tokens": 2, "model": "tiny", "cache": "no-store"},
    "/v1/chat/completions": {
        "model": "tiny",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stop": ["Human:", "###"],
        "user": "u",
        "cache": "no-store",
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "description": "d",
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "string", "pattern": "^a", "enum": ["a"]}},
                    "required": ["a"],
                    "$defs": {"b": {"type": "string"}},
                },
            },
        },
        "logit_bias": {"1": 1},
    },
    "/v1/completions": {"model": "tiny", "max_tokens": 2, "prompt": ["hi"], "stop": "###", "cache": "no-store"},
    "/v1/embeddings": {"model": "tiny", "input": ["hi", "there"], "encoding_format": "float", "cache": "no-store"},
    "/tokenize": {"content": "hi", "with_pieces": True},
    "/detokenize": {"tokens": [1, 2]},
}
SCHEMA = ("response_format", "json_schema", "schema")
FIELDS: dict[str, list[tuple[object, ...]]] = {
    "/chat": [("prompt",), ("model",), ("cache",), (KEY,)],
    "/v1/chat/completions": [
        ("model",),
        ("messages", 0, "role"),
        ("messages", 0, "content"),
        ("messages", 1, "content", 0, "text"),
        ("messages", 1, "content", 0, "type"),
        ("messages", 1, KEY),
        ("stop",),
        ("stop", 1),
        ("user",),
        ("cache",),
        ("response_format", "type"),
        ("response_format", "json_schema", "name"),
        ("response_format", "json_schema", "description"),
        (*SCHEMA, "$ref"),
        (*SCHEMA, "type"),
        (*SCHEMA, "required", 0),
        (*SCHEMA, "properties", KEY),
        (*SCHEMA, "properties", "a", "pattern"),
        (*SCHEMA, "properties", "a", "enum", 0),
        (*SCHEMA, "$defs", "b", "type"),
        ("logit_bias", KEY),
        (KEY,),
    ],
    "/v1/completions": [("model",), ("prompt", 0), ("prompt",), ("stop",), ("cache",), (KEY,)],
    "/v1/embeddings": [("model",), ("input", 0), ("input",), ("encoding_format",), ("cache",), (KEY,)],
    "/tokenize": [("content",), (KEY,)],
    "/detokenize": [("tokens", 0), (KEY,)],
}
# Lone surrogates (high and low), control characters and a few ordinary ones, at least one of the first two.
NASTY_CHAR = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(categories=["Cc"])
NASTY = st.builds(
    lambda head, nasty, tail: head + nasty + tail,
    st.text(st.sampled_from('a #/:$\\"é😀'), max_size=4),
    st.text(NASTY_CHAR, min_size=1, max_size=3),
    st.text(NASTY_CHAR | st.sampled_from("b #/"), max_size=4),
)


def put(body: Any, path: tuple[object, ...], value: str) -> None:
    """Put `value` at `path`; nothing where an earlier change took the path away."""
    *parents, last = path
    for part in parents:
        if isinstance(body, str):
            return
        body = body[part]
    if isinstance(body, str):
        return
    if last is KEY:
        body[value] = "x"
    else:
        body[last] = value


@st.composite
def nasty_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A route and a raw body: its valid body with one to three string fields nasty, every non-ASCII
    character written as a JSON `\\uXXXX` escape (a lone surrogate as its escape text) or, sometimes, raw:
    control characters unescaped, surrogates in the bytes UTF-8 would give them (not valid UTF-8)."""
    route = draw(st.sampled_from(sorted(VALID)))
    body = json.loads(json.dumps(VALID[route]))
    for path in draw(st.lists(st.sampled_from(FIELDS[route]), min_size=1, max_size=3, unique=True)):
        put(body, path, draw(NASTY))
    if route.startswith("/v1/") and route != "/v1/embeddings" and draw(st.booleans()):
        body["stream"] = True
    if draw(st.booleans()):
        return route, json.dumps(body).encode("ascii")
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return route, re.sub(rb"\\u00([01][0-9a-f])", lambda m: bytes([int(m[1], 16)]), raw)


def check_any_route(response: httpx.Response) -> None:
    """Not a 5xx, and a body that is JSON (each event of a stream)."""
    assert response.status_code < 500, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
        assert events[-1] == "[DONE]" or "error" in json.loads(events[-1])
        for data in events[:-1]:
            json.loads(data)
        return
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body["error"]["message"], str) and body["error"]["request_id"]


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=nasty_requests())
def test_lone_surrogates_and_control_characters_in_any_string_field_never_5xx(
    server: httpx.Client, request: tuple[str, bytes]
) -> None:
    route, raw = request
    check_any_route(server.post(route, content=raw, headers={"content-type": "application/json"}))
