"""The token distribution over HTTP: `logprobs` (chat: `logprobs` + `top_logprobs`; completions:
`logprobs: n`) and `logit_bias`, with the official `openai` client and the tiny model.

The tiny model's tokens are single bytes, often parts of UTF-8 characters: the `bytes` fields, not the
token strings, add up to the answer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from tests.conftest import LiveServer

A = 0x61 + 4  # the tiny vocabulary's token for "a" (4 control tokens, then the 256 bytes)


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    request: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 12}
    return client.chat.completions.with_raw_response.create(**{**request, **extra})


def test_chat_logprobs_one_per_token_adding_up_to_the_answer(client: openai.OpenAI) -> None:
    raw = chat(client, logprobs=True, top_logprobs=3)
    out = raw.parse()
    choice = out.choices[0]
    content = choice.logprobs.content
    assert choice.finish_reason == "length" and len(content) == out.usage.completion_tokens == 12
    assert bytes(b for entry in content for b in entry.bytes).decode("utf-8", "ignore") == choice.message.content
    for entry in content:
        tops = entry.top_logprobs
        assert len(tops) == 3
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert (tops[0].bytes, tops[0].logprob) == (entry.bytes, entry.logprob)  # greedy: the most likely token
        assert entry.logprob < 0
        assert entry.token == (
            bytes(entry.bytes).decode()
            if _utf8(entry.bytes)
            else "bytes:" + "".join(f"\\x{b:02x}" for b in entry.bytes)
        )
    without_tops = chat(client, logprobs=True).parse().choices[0].logprobs.content
    assert [(e.bytes, e.top_logprobs) for e in without_tops] == [(e.bytes, []) for e in content]
    # as close as a prompt decoded another way (here: its prefix reused from the cache) leaves them
    assert [e.logprob for e in without_tops] == pytest.approx([e.logprob for e in content], abs=1e-4)


def _utf8(data: list[int]) -> bool:
    try:
        bytes(data).decode()
    except UnicodeDecodeError:
        return False
    return True


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    prompt = "Once upon a time"
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, logprobs=2)
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and out.usage is not None
    n = out.usage.completion_tokens
    assert len(logprobs.tokens or []) == len(logprobs.token_logprobs or []) == len(logprobs.top_logprobs or []) == n
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == len(prompt)  # counted from the prompt
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[-1] <= len(prompt) + len(
        out.choices[0].text
    )
    entries = zip(logprobs.tokens or [], logprobs.token_logprobs or [], logprobs.top_logprobs or [], strict=True)
    for token, logprob, top in entries:
        assert next(iter(top.items())) == (token, logprob)  # greedy
        assert len(top) == 2 and list(top.values()) == sorted(top.values(), reverse=True)
    chat_side = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me"}], max_tokens=10, logprobs=True, top_logprobs=2
    )
    assert chat_side.choices[0].logprobs is not None
    zero = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, logprobs=0).choices[0].logprobs
    assert zero is not None and zero.top_logprobs == [{}] * n and zero.tokens == logprobs.tokens


def test_logprobs_are_cached_with_the_answer_and_asked_for_in_the_key(
    client: openai.OpenAI, settings: Settings
) -> None:
    first = chat(client, logprobs=True, top_logprobs=2)
    assert first.headers["x-cache"] == "MISS"
    again = chat(client, logprobs=True, top_logprobs=2)
    assert again.headers["x-cache"] == "HIT-MEMORY"
    assert again.parse().choices[0].logprobs == first.parse().choices[0].logprobs
    plain = chat(client)
    assert plain.headers["x-cache"] == "MISS" and plain.parse().choices[0].logprobs is None
    assert plain.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert chat(client, logprobs=True, top_logprobs=3).headers["x-cache"] == "MISS"
    # from disk, in a fresh container: the entry keeps them exactly
    with LiveServer(create_app(settings)) as other:
        cold = openai.OpenAI(base_url=f"{other.url}/v1", api_key="x", max_retries=0, timeout=60)
        disk = chat(cold, logprobs=True, top_logprobs=2)
    assert disk.headers["x-cache"] == "HIT-DISK"
    assert disk.parse().choices[0].logprobs == first.parse().choices[0].logprobs


def test_a_stream_sends_the_logprobs_in_its_last_chunk(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "stream"}],
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 1,
    }
    chunks = [c for c in client.chat.completions.create(**request, stream=True) if c.choices]
    assert all(c.choices[0].logprobs is None for c in chunks[:-1])
    last = chunks[-1].choices[0]
    assert last.finish_reason == "length" and last.logprobs is not None and last.logprobs.content is not None
    whole = client.chat.completions.create(**request)  # the completed stream was stored: a hit
    assert whole.choices[0].logprobs is not None
    assert last.logprobs.content == whole.choices[0].logprobs.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    raw = list(client.completions.create(model="tiny", prompt="s", max_tokens=5, logprobs=1, stream=True))
    assert raw[-1].choices[0].logprobs is not None and len(raw[-1].choices[0].logprobs.tokens or []) == 5


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logit_bias": {"260": 1}}, "logit_bias"),
        ("/v1/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
        ("/v1/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
        ("/v1/completions", {"logit_bias": {"-1": 1}}, "logit_bias"),
        ("/v1/completions", {"logit_bias": {"5": 1, "05": 2}}, "logit_bias"),
    ],
)
def test_bad_logprobs_and_logit_bias_are_400(http: httpx.Client, route: str, extra: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 4, **extra}
    body.update({"messages": [{"role": "user", "content": "x"}]} if "chat" in route else {"prompt": "x"})
    response = http.post(route, json=body)
    assert response.status_code == 400, response.text
    assert param in response.json()["error"]["message"] or response.json()["error"].get("param") == param


def test_defaults_ask_for_nothing(http: httpx.Client) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4}
    first = http.post("/v1/completions", json=body)
    for extra in ({"logprobs": None}, {"logprobs": False}, {"logit_bias": {}}, {"logit_bias": None}):
        response = http.post("/v1/completions", json={**body, **extra})
        assert response.headers["x-cache"] == "HIT-MEMORY", extra
        assert response.json()["choices"][0] == first.json()["choices"][0]


def test_logit_bias_steers_the_answer_and_is_in_the_key(client: openai.OpenAI, http: httpx.Client) -> None:
    forced = client.completions.with_raw_response.create(
        model="tiny", prompt="Hi", max_tokens=8, logit_bias={str(A): 100}
    )
    assert forced.parse().choices[0].text == "a" * 8
    plain = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 8})
    assert plain.headers["x-cache"] == "MISS" and plain.json()["choices"][0]["text"] != "a" * 8
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 8}
    one = http.post("/v1/completions", json={**body, "logit_bias": {str(A): 5, "50": -1.0}})
    same = http.post("/v1/completions", json={**body, "logit_bias": {"50": -1, str(A): 5.0}})
    assert (one.headers["x-cache"], same.headers["x-cache"]) == ("MISS", "HIT-MEMORY")  # one key, however written
    banned_first = json.loads(plain.text)["choices"][0]["text"][:1]
    if banned_first and banned_first.isascii():
        banned = http.post(
            "/v1/completions", json={**body, "max_tokens": 1, "logit_bias": {str(ord(banned_first) + 4): -100}}
        )
        assert banned.json()["choices"][0]["text"] != banned_first
