"""Structured output: `response_format` json_object and json_schema, held by a llama.cpp grammar while
the answer is sampled, over real HTTP with the official `openai` client.

The tiny model writes random bytes: only the grammar makes its answers JSON, which is the point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from handler.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer"},
        "inner": {
            "type": "object",
            "properties": {
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
            },
            "required": ["ok", "tags"],
            "additionalProperties": False,
        },
    },
    "required": ["color", "size", "inner"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a shirt", "Hi", "x", "A thing"]


def json_schema(schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "shirt", "schema": schema, "strict": True}}


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """jsonschema where it is installed; else a check of the keywords these tests use."""
    try:
        import jsonschema
    except ImportError:
        _check(instance, schema)
    else:
        jsonschema.validate(instance, schema)


def _check(value: Any, schema: dict[str, Any]) -> None:
    if "enum" in schema:
        assert value in schema["enum"]
        return
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict)
        assert set(schema.get("required", ())) <= set(value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema.get("properties", {}))
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _check(value[name], sub)
    elif kind == "array":
        assert isinstance(value, list) and len(value) <= schema.get("maxItems", len(value))
        for item in value:
            _check(item, schema["items"])
    elif kind == "string":
        assert isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif kind == "boolean":
        assert isinstance(value, bool)


def test_json_schema_answers_validate_on_both_routes(client: openai.OpenAI) -> None:
    """Enum, required keys, a nested object and an array: every answer parses and follows the schema."""
    for prompt in PROMPTS:
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=300,
            response_format=json_schema(),  # type: ignore[arg-type]
        )
        assert chat.choices[0].finish_reason == "stop", prompt
        validate(json.loads(chat.choices[0].message.content or ""), SCHEMA)
        raw = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=300, extra_body={"response_format": json_schema()}
        )
        assert raw.choices[0].finish_reason == "stop", prompt
        validate(json.loads(raw.choices[0].text), SCHEMA)


def test_json_object_answers_are_json_objects(client: openai.OpenAI) -> None:
    """Any JSON object (llama-cpp-python's JSON grammar); sampled, so that the random model closes it."""
    finished = 0
    for seed in range(4):
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "JSON"}],
            max_tokens=60,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_object"},
        )
        raw = client.completions.create(
            model="tiny",
            prompt="JSON",
            max_tokens=60,
            temperature=1.0,
            seed=seed,
            extra_body={"response_format": {"type": "json_object"}},
        )
        answers = [(chat.choices[0].message.content or "", chat.choices[0].finish_reason)]
        answers.append((raw.choices[0].text, raw.choices[0].finish_reason))
        for text, reason in answers:
            assert text.startswith("{")
            if reason == "stop":
                assert isinstance(json.loads(text), dict)
                finished += 1
    assert finished > 0


def test_an_answer_max_tokens_cut_is_length_and_not_stored(http: httpx.Client) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Describe a shirt"}],
        "max_tokens": 10,
        "response_format": json_schema(),
    }
    for stream in (False, True):
        first = http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        if not stream:
            assert first.json()["choices"][0]["finish_reason"] == "length"
            assert first.headers["x-finish-reason"] == "length"
        else:
            assert '"finish_reason": "length"' in first.text
        again = http.post("/v1/chat/completions", json=body)
        assert again.headers["x-cache"] == "MISS"  # a cut structured answer is not the answer
    whole = {**body, "max_tokens": 300}
    assert http.post("/v1/chat/completions", json=whole).json()["choices"][0]["finish_reason"] == "stop"
    assert http.post("/v1/chat/completions", json=whole).headers["x-cache"] == "HIT-MEMORY"  # a whole one is


def test_a_plain_answer_max_tokens_cut_is_still_stored(http: httpx.Client) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "plain"}], "max_tokens": 5}
    assert http.post("/v1/chat/completions", json=body).json()["choices"][0]["finish_reason"] == "length"
    assert http.post("/v1/chat/completions", json=body).headers["x-cache"] == "HIT-MEMORY"


def test_the_grammar_is_part_of_the_key(http: httpx.Client) -> None:
    base = {"model": "tiny", "prompt": "Hi", "max_tokens": 300}
    other = {**SCHEMA, "required": ["color", "size"]}
    variants = [{}, {"response_format": {"type": "json_object"}}, {"response_format": json_schema()}]
    variants.append({"response_format": json_schema(other)})
    answers = []
    for extra in variants:
        response = http.post("/v1/completions", json={**base, **extra})
        assert response.headers["x-cache"] == "MISS", extra
        answers.append(response.json()["choices"][0]["text"])
    assert http.post("/v1/completions", json={**base, "response_format": json_schema()}).headers["x-cache"] == (
        "HIT-MEMORY"
    )
    plain = http.post("/v1/completions", json={**base, "response_format": {"type": "text"}})
    assert plain.headers["x-cache"] == "HIT-MEMORY" and plain.json()["choices"][0]["text"] == answers[0]


def test_a_structured_stream_adds_up_to_the_answer(client: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=300, response_format=json_schema()
    )
    chunks = list(client.chat.completions.create(**request, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    validate(json.loads(text), SCHEMA)
    fresh = client.chat.completions.create(**request, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.choices[0].message.content == text


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        (json_schema({"type": "strin"}), "Unrecognized schema"),
        (json_schema({"type": "string", "pattern": "abc"}), 'Pattern must start with "^"'),
        (json_schema({"$ref": "https://example.com/schema.json"}), "Fetching remote schemas is not allowed"),
    ],
)
def test_a_schema_the_converter_rejects_is_a_400(
    client: openai.OpenAI, response_format: dict[str, Any], words: str
) -> None:
    for create in (
        lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], response_format=response_format
        ),  # type: ignore[call-overload]
        lambda: client.completions.create(model="tiny", prompt="x", extra_body={"response_format": response_format}),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            create()
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == "response_format"
        assert words in error["message"]


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": {}}},  # no name
        {"type": "json_object", "schema": {}},
    ],
)
def test_malformed_response_formats_are_400(http: httpx.Client, response_format: dict[str, Any]) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": response_format}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "response_format" in response.json()["error"]["message"]


def test_a_json_schema_without_a_schema_is_any_json_object(http: httpx.Client) -> None:
    body = {
        "model": "tiny",
        "prompt": "JSON",
        "max_tokens": 60,
        "temperature": 1.0,
        "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "anything"}},
    }
    object_body = {**body, "response_format": {"type": "json_object"}}
    assert http.post("/v1/completions", json=object_body).json() is not None
    assert http.post("/v1/completions", json=body).headers["x-cache"] == "HIT-MEMORY"  # the same grammar


PLAIN_PROCESS = r"""
import asyncio, json, sys
from handler.api.openai import request_params
from handler.api.openai_schemas import ChatCompletionRequest
from handler.app import create_app
from handler.core.settings import Settings
service = create_app(Settings(model_path=sys.argv[1], cache_dir=None)).state.chat
plain = ChatCompletionRequest.model_validate(
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "logit_bias": {"5": 1}}
)
asyncio.run(request_params(service, plain, None))
after_plain = "llama_cpp" in sys.modules
structured = ChatCompletionRequest.model_validate({**plain.model_dump(exclude_none=True), "response_format": {"type": "json_object"}})
params = asyncio.run(request_params(service, structured, None))
print(json.dumps({"after_plain": after_plain, "after_structured": "llama_cpp" in sys.modules, "grammar": params.grammar}))
"""


def test_only_a_structured_request_imports_llama_cpp(settings: Settings) -> None:
    """Request parameters are made without llama_cpp (a cold cache hit never imports it); the grammar
    converter imports it only for a request that asks for structured output."""
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_PROCESS, settings.model_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after_plain"] is False
    assert result["after_structured"] is True and "root   ::= object" in result["grammar"]
