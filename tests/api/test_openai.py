"""The OpenAI-compatible API, driven by the official `openai` client over real HTTP (uvicorn)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from mangum import Mangum

from handler.api.openai import openai_finish_reason
from handler.app import create_app
from handler.core.settings import Settings
from handler.core.types import ChatMessage, Completion, FinishReason
from handler.engine.model import ModelHolder, load_engine
from handler.service.prompts import chat_prompt, compose
from tests.conftest import (
    FakeLambdaContext,
    LiveServer,
    PacedEngine,
    WrappedEngine,
    client_for,
    lambda_body,
    lambda_event,
    lines,
    same_generation,
)
from tests.helpers.reference import reference_completion
from tests.tiny_gguf import write_tiny_gguf

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_models_list_names_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_completion_is_the_raw_llama_cpp_completion(client: openai.OpenAI, settings: Settings) -> None:
    # 16 tokens, where llama-cpp-python keeps its own max_tokens (at 12 it runs on to 16: see the next test)
    out = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16)
    expected = reference_completion(settings, prompt="Once upon a time", max_tokens=16)
    assert out.choices[0].text == expected["choices"][0]["text"]
    assert out.choices[0].finish_reason == expected["choices"][0]["finish_reason"]
    assert out.usage is not None and out.usage.model_dump(exclude_none=True) == expected["usage"]
    assert out.object == "text_completion" and out.model == "tiny" and out.id.startswith("cmpl-")


def test_max_tokens_holds_where_llama_cpp_python_runs_past_it(client: openai.OpenAI, settings: Settings) -> None:
    """llama-cpp-python skips its max_tokens check while the text ends inside a UTF-8 character. The random
    tiny model writes such bytes: raw, one of these prompts ran to the end of the context and failed."""
    prompts = [f"Once {i}" for i in range(6)]
    raw = []
    for prompt in prompts:
        try:
            raw.append(reference_completion(settings, prompt=prompt, max_tokens=100)["usage"]["completion_tokens"])
        except RuntimeError:  # llama_decode returned 1: no room left in the context
            raw.append(None)
    assert any(n is None or n > 100 for n in raw)  # the case is here
    for prompt in prompts:
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=100)
        assert out.usage is not None and out.usage.completion_tokens == 100, prompt
        assert out.choices[0].finish_reason == "length"


def test_chat_without_a_template_uses_the_config_template(client: openai.OpenAI, settings: Settings) -> None:
    """Tiny model has no chat template: a single user message is exactly /chat's prompt."""
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=10)
    expected = reference_completion(settings, prompt=compose(settings, "Hi"), max_tokens=10, stop=settings.stop)
    assert out.choices[0].message.content is not None
    assert same_generation(
        out.choices[0].message.content, expected["choices"][0]["text"], expected["usage"]["completion_tokens"], 10
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage is not None and out.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


def test_chat_with_the_models_own_template_equals_llama_cpp_chat(tmp_path: Path, settings: Settings) -> None:
    model = write_tiny_gguf(tmp_path / "templated.gguf", chat_template=TEMPLATE)
    settings = settings.model_copy(update={"model_path": str(model)})
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again?"},
    ]
    with LiveServer(create_app(settings)) as server:
        out = client_for(server).chat.completions.create(model="templated", messages=messages, max_tokens=10)
    expected = reference_completion(settings, messages=messages, max_tokens=10)
    assert out.choices[0].message.content is not None
    assert same_generation(
        out.choices[0].message.content,
        expected["choices"][0]["message"]["content"],
        expected["usage"]["completion_tokens"],
        10,
    )
    assert out.usage is not None and out.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


def test_stream_concatenates_to_the_whole_answer_and_is_stored(client: openai.OpenAI, server: LiveServer) -> None:
    request = dict(model="tiny", messages=[{"role": "user", "content": "Tell me"}], max_tokens=24)
    stream = client.chat.completions.with_raw_response.create(**request, stream=True)
    assert stream.headers["x-cache"] == "MISS"
    chunks = list(stream.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # token by token, not one blob
    assert chunks[-1].choices[0].finish_reason == "length"

    fresh = client.chat.completions.with_raw_response.create(**request, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "MISS"  # generated afresh, not read back from the stream's entry
    assert "".join(pieces) == fresh.parse().choices[0].message.content

    again = client.chat.completions.with_raw_response.create(**request)
    assert again.headers["x-cache"] == "HIT-MEMORY"  # the completed stream was stored


def test_a_cache_hit_streams_from_the_cache(client: openai.OpenAI) -> None:
    request = dict(model="tiny", prompt="cached", max_tokens=8)
    whole = client.completions.create(**request)
    replay = client.completions.with_raw_response.create(**request, stream=True, stream_options={"include_usage": True})
    assert replay.headers["x-cache"] == "HIT-MEMORY"
    chunks = list(replay.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage


def test_the_same_model_input_is_the_same_answer_whichever_route_sent_it(
    http: httpx.Client, settings: Settings, live_server: Any
) -> None:
    """The key is the model's input, not the route: /chat's prompt as one chat message (a model without a
    template), or sent raw where raw prompts are read as text as /chat's are."""
    text = http.post("/chat", json={"prompt": "shared", "max_tokens": 6}).json()["text"]
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "tiny", "max_tokens": 6, "messages": [{"role": "user", "content": "shared"}]},
    )
    assert chat.headers["x-cache"] == "HIT-MEMORY"
    assert chat.json()["choices"][0]["message"]["content"].strip() == text
    raw = {"model": "tiny", "max_tokens": 6, "stop": settings.stop, "prompt": compose(settings, "shared")}
    parsed = http.post("/v1/completions", json=raw)
    assert parsed.headers["x-cache"] == "MISS"  # raw prompts parse control-token text: another input
    assert parsed.json()["choices"][0]["text"].strip() == text  # (none here: the same tokens)

    plain = create_app(settings.model_copy(update={"completion_parse_special": False}))
    with httpx.Client(base_url=live_server(plain).url, timeout=30) as other:
        assert other.post("/chat", json={"prompt": "shared", "max_tokens": 6}).json()["text"] == text
        assert other.post("/v1/completions", json=raw).headers["x-cache"] == "HIT-MEMORY"


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "other"}]},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "key"}]},
        {"temperature": 0.7},
        {"seed": 7},
        {"stop": ["x"]},
        {"max_tokens": 7},
        {"top_p": 0.5},
        {"presence_penalty": 0.5},
    ],
)
def test_anything_that_changes_the_answer_misses(http: httpx.Client, change: dict[str, Any]) -> None:
    base = {"model": "tiny", "max_tokens": 6, "messages": [{"role": "user", "content": "key"}]}
    http.post("/v1/chat/completions", json=base)
    assert http.post("/v1/chat/completions", json=base).headers["x-cache"] == "HIT-MEMORY"
    assert http.post("/v1/chat/completions", json={**base, **change}).headers["x-cache"] == "MISS"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 9}, "n"),  # above max_choices (8)
        ({"functions": [{"name": "f"}]}, "functions"),  # the deprecated form of tools
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(client: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and f"`{param}`" in error["message"]


def test_defaults_sent_explicitly_are_accepted(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "x"}],
            "n": 1,
            "logprobs": False,
            "response_format": {"type": "text"},
            "tools": None,
            "user": "u-1",
        },
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "serves `tiny`"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}, 400, "role is user"),
        ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "messages.0.content",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000}, 400, "max_tokens"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]},
            400,
            "stop",
        ),
    ],
)
def test_bad_chat_requests(http: httpx.Client, body: dict[str, Any], status: int, words: str) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_context_overflow_before_a_stream_is_a_plain_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions", json={"model": "tiny", "prompt": "x" * 400, "max_tokens": 300, "stream": True}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "context" in response.json()["error"]["message"]


def paced_app(settings: Settings, **pacing: Any) -> tuple[FastAPI, list[PacedEngine]]:
    made: list[PacedEngine] = []

    def loader(s: Settings) -> PacedEngine:
        made.append(PacedEngine(load_engine(s), **pacing))
        return made[-1]

    return create_app(settings, model=ModelHolder(settings, loader=loader)), made


def sse_data(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def test_tokens_reach_the_client_while_the_model_is_still_generating(settings: Settings) -> None:
    """The test flags its first event; the model must see the flag before it finishes. A buffered
    stream would deliver the first event only after the last token."""
    client_has_text = threading.Event()
    app, made = paced_app(settings, watch=client_has_text)
    with (
        LiveServer(app) as server,
        httpx.stream(
            "POST",
            f"{server.url}/v1/completions",
            timeout=30,
            json={"model": "tiny", "prompt": "stream", "max_tokens": 60, "stream": True},
        ) as response,
    ):
        events = sse_data(response.iter_lines())
        assert next(events)["choices"][0]["finish_reason"] is None  # a first piece, not the end
        client_has_text.set()
        rest = list(events)
    assert made[0].watch_seen_at is not None
    assert made[0].watch_seen_at < made[0].tokens
    assert rest[-1] == "[DONE]"


def test_a_client_that_disconnects_stops_the_generation(settings: Settings, access_log: io.StringIO) -> None:
    app, made = paced_app(settings)
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": 400, "stream": True}
    with LiveServer(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
            events = sse_data(response.iter_lines())
            next(events), next(events)
        assert made[0].done.wait(10), "the generation kept running after the client left"
        assert made[0].tokens < 100
        after = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=30)
        assert after.status_code == 200  # the model is free
        again = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, timeout=60)
    assert again.headers["x-cache"] == "MISS"  # the abandoned answer was not stored
    abandoned = lines(access_log)[0]
    assert (abandoned["status"], abandoned["cache"], abandoned["stream"]) == (200, "MISS", True)
    assert abandoned["finish_reason"] == "cancelled"


class FailsAfterItsText(WrappedEngine):
    """The real engine streaming its text, then failing: the fault injected once the 200 is out."""

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Future[Any]:
        failed: Future[Any] = Future()
        real = self.real.submit(tokens, params, **kwargs)
        real.add_done_callback(lambda _: failed.set_exception(RuntimeError("ggml_abort mid-stream")))
        return failed


def test_a_stream_that_fails_after_its_first_piece_is_logged_as_an_error(
    settings: Settings, access_log: io.StringIO
) -> None:
    """Not as cancelled: the client stayed, the service failed it. Nothing is stored."""
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: FailsAfterItsText(load_engine(s))))
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": 40, "stream": True}
    with LiveServer(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
            events = list(sse_data(response.iter_lines()))
        again = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200
    assert events[0]["choices"][0]["text"] and events[-1]["error"]["type"] == "generation_failed"
    assert again.headers["x-cache"] == "MISS"
    failed = lines(access_log)[0]
    assert (failed["status"], failed["stream"], failed["finish_reason"]) == (200, True, "error")


@pytest.mark.parametrize("reason", list(FinishReason))
def test_every_finish_reason_is_one_openai_knows(reason: FinishReason) -> None:
    assert openai_finish_reason(Completion("", reason, 0, 0)) in {"stop", "length"}


def test_streaming_under_mangum_returns_the_whole_event_stream(settings: Settings) -> None:
    handler = Mangum(create_app(settings), lifespan="off")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "lambda"}], "max_tokens": 12}
    streamed = handler(
        lambda_event("function-url", {**body, "stream": True}, path="/v1/chat/completions"), FakeLambdaContext()
    )
    assert streamed["statusCode"] == 200
    assert streamed["headers"]["content-type"].startswith("text/event-stream")
    raw = streamed["body"]
    if streamed.get("isBase64Encoded"):
        import base64

        raw = base64.b64decode(raw).decode()
    events = list(sse_data(iter(raw.splitlines())))
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    whole = handler(lambda_event("function-url", body, path="/v1/chat/completions"), FakeLambdaContext())
    assert text == lambda_body(whole)["choices"][0]["message"]["content"]


def test_the_fallback_template_writes_the_whole_conversation(settings: Settings) -> None:
    settings = settings.model_copy(update={"system_prompt": "Be kind."})
    turns = [ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")]
    assert chat_prompt(settings, turns).fallback.full_text == (
        "System: Be kind.\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    )
    assert chat_prompt(settings, [ChatMessage("system", "Be terse."), ChatMessage("user", "a")]).fallback.full_text == (
        "System: Be terse.\n\nHuman: a\n\nAssistant:"
    )


def test_streams_count_against_the_queue_bound(settings: Settings) -> None:
    app, made = paced_app(settings.model_copy(update={"max_pending_generations": 1}))
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": 300, "stream": True}
    with (
        LiveServer(app) as server,
        httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response,
    ):
        events = sse_data(response.iter_lines())  # held: dropping the iterator would close the connection
        next(events)
        busy = httpx.post(f"{server.url}/v1/completions", json={**body, "prompt": "other"}, timeout=30)
        assert not made[0].done.is_set()  # refused while the first stream was still generating
    assert busy.status_code == 429 and busy.headers["retry-after"]


def test_the_openai_clients_api_key_is_checked_when_keys_are_configured(settings: Settings) -> None:
    key = "k" * 24
    with LiveServer(create_app(settings.model_copy(update={"api_keys": [key]}))) as server:
        keyed = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
        assert [m.id for m in keyed.models.list()] == ["tiny"]
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-" * 4, max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
