"""`POST /v1/messages`, Anthropic's Messages API, driven by the official `anthropic` client over real HTTP (uvicorn)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.api.test_openai import FailsAfterItsText
from tests.conftest import LiveServer, lines

FRESH = {"Cache-Control": "no-cache"}  # generated afresh, not read back from an earlier answer
HELLO = [{"role": "user", "content": "Hello"}]


def anthropic_client(server: LiveServer, api_key: str = "not-needed") -> anthropic.Anthropic:
    """The official Anthropic client, talking to the server (it adds /v1/messages itself)."""
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture
def claude(server: LiveServer) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(server) as client:
        yield client


def test_a_message_is_one_text_block(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(model="tiny", max_tokens=10, messages=HELLO)
    out = raw.parse()
    assert out.type == "message" and out.role == "assistant" and out.model == "tiny" and out.id.startswith("msg_")
    assert [block.type for block in out.content] == ["text"]
    cut = raw.headers["x-finish-reason"] == "length"
    assert out.stop_reason == ("max_tokens" if cut else "end_turn")
    assert out.stop_sequence is None
    assert 0 < out.usage.output_tokens <= 10 and out.usage.input_tokens > 0


def test_stop_reason_is_max_tokens_when_max_tokens_cuts_it(claude: anthropic.Anthropic) -> None:
    out = claude.messages.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "A long story"}])
    assert out.stop_reason == "max_tokens"
    assert out.usage.output_tokens == 3


def test_the_stream_adds_up_to_the_unstreamed_message(claude: anthropic.Anthropic) -> None:
    # The SDK no longer takes temperature (newer Claude models refuse it); it travels in the body still.
    request: dict[str, Any] = dict(
        model="tiny", max_tokens=24, messages=[{"role": "user", "content": "Tell me"}], extra_body={"temperature": 0}
    )
    with claude.messages.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_message()
    pieces = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(pieces) > 1  # token by token, not one blob
    whole = claude.messages.create(**request, extra_headers=FRESH)
    assert whole.content[0].type == "text" and final.content[0].type == "text"
    assert "".join(pieces) == whole.content[0].text == final.content[0].text
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == (
        whole.stop_reason,
        whole.usage.input_tokens,
        whole.usage.output_tokens,
    )
    again = claude.messages.with_raw_response.create(**request)
    assert again.headers["x-cache"] == "HIT-MEMORY"  # the completed stream was stored


def test_a_stop_sequence_says_which_one_ended_the_message(claude: anthropic.Anthropic) -> None:
    request: dict[str, Any] = dict(
        model="tiny", max_tokens=24, messages=[{"role": "user", "content": "Tell me"}], extra_body={"temperature": 0}
    )
    text = claude.messages.create(**request).content[0]
    assert text.type == "text"
    # an ASCII character first met past the start: the random model's text has bytes that decode to nothing
    stop = next(c for i, c in enumerate(text.text) if i >= 2 and c.isascii() and c.isalnum() and c not in text.text[:i])
    cut = claude.messages.create(**request, stop_sequences=["never there", stop])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert (
        cut.content[0].type == "text" and text.text.startswith(cut.content[0].text) and stop not in cut.content[0].text
    )
    with claude.messages.stream(**request, stop_sequences=["never there", stop], extra_headers=FRESH) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    hit = claude.messages.with_raw_response.create(**request, stop_sequences=["never there", stop])
    assert hit.headers["x-cache"] == "HIT-MEMORY" and hit.parse().stop_sequence == stop


def test_the_raw_stream_is_anthropics_event_sequence(http: httpx.Client) -> None:
    body = {"model": "tiny", "max_tokens": 12, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    frames = [frame.split("\n") for frame in text.strip().split("\n\n")]
    names = [frame[0].removeprefix("event: ") for frame in frames]
    deltas = names.count("content_block_delta")
    assert deltas > 0
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(
        frame[1].startswith("data: {") and f'"type": "{name}"' in frame[1]
        for frame, name in zip(frames, names, strict=True)
    )


def test_system_and_content_blocks_are_the_chat_messages(http: httpx.Client) -> None:
    """The key is the model's input and sampling, not the route: `system` and the messages are the chat
    messages `/v1/chat/completions` takes, `stop_sequences` its `stop`, so both share one answer."""
    chat = http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "max_tokens": 8,
            "temperature": 0,
            "stop": ["zz"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again?"},
            ],
        },
    )
    assert chat.headers["x-cache"] == "MISS"
    same = http.post(
        "/v1/messages",
        json={
            "model": "tiny",
            "max_tokens": 8,
            "temperature": 0,
            "stop_sequences": ["zz"],
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again?"},
            ],
        },
    )
    assert same.status_code == 200, same.text
    assert same.headers["x-cache"] == "HIT-MEMORY"
    assert same.json()["content"][0]["text"] == chat.json()["choices"][0]["message"]["content"]
    assert same.json()["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]


def test_the_same_request_twice_is_a_memory_hit(http: httpx.Client) -> None:
    body = {"model": "tiny", "max_tokens": 6, "messages": [{"role": "user", "content": "twice"}]}
    first = http.post("/v1/messages", json=body)
    second = http.post("/v1/messages", json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-MEMORY")
    assert second.json()["content"] == first.json()["content"]
    for change in ({"top_k": 5}, {"stop_sequences": ["q"]}, {"system": "Be terse."}, {"max_tokens": 7}):
        assert http.post("/v1/messages", json={**body, **change}).headers["x-cache"] == "MISS", change


def test_accepted_parameters_change_nothing(http: httpx.Client) -> None:
    base = {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "accepted"}]}
    first = http.post("/v1/messages", json=base)
    extras = {"metadata": {"user_id": "u-1"}, "service_tier": "auto", "thinking": {"type": "disabled"}}
    second = http.post("/v1/messages", json={**base, **extras}, headers={"anthropic-version": "2023-06-01"})
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "HIT-MEMORY"
    assert second.json()["content"] == first.json()["content"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"frobnicate": 1}, "`frobnicate`"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "`thinking`"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens is 10000"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "must end with a user message"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content"),
        ({"temperature": 1.5}, "temperature"),
        ({"tools": [{"name": "no spaces", "input_schema": {"type": "object"}}]}, "Tool names"),
        ({"tool_choice": {"type": "any"}}, "needs `tools`"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "4"}]}]},
            "answers a `tool_use`",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "cannot hold",
        ),
    ],
)
def test_errors_are_in_anthropics_shape(http: httpx.Client, body: dict[str, Any], words: str) -> None:
    request = {"model": "tiny", "max_tokens": 5, "messages": HELLO, **body}
    response = http.post("/v1/messages", json={k: v for k, v in request.items() if v is not None})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"] and error["request_id"] == response.headers["x-request-id"]


def test_the_sdk_raises_its_own_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)
    assert isinstance(missing.value.body, dict) and missing.value.body["error"]["type"] == "not_found_error"
    assert "`tiny`" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="tiny", max_tokens=5, messages=HELLO, extra_body={"frobnicate": 1})
    assert isinstance(bad.value.body, dict) and bad.value.body["error"]["type"] == "invalid_request_error"


def test_the_api_key_goes_in_x_api_key(settings: Settings) -> None:
    key = "k" * 24
    with LiveServer(create_app(settings.model_copy(update={"api_keys": [key]}))) as server:
        out = anthropic_client(server, key).messages.create(model="tiny", max_tokens=4, messages=HELLO)
        assert out.type == "message"
        with pytest.raises(anthropic.AuthenticationError) as caught:
            anthropic_client(server, "wrong-" * 4).messages.create(model="tiny", max_tokens=4, messages=HELLO)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "authentication_error"


def test_a_stream_that_fails_after_its_first_piece_ends_with_an_error_event(
    settings: Settings, access_log: io.StringIO
) -> None:
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: FailsAfterItsText(load_engine(s))))
    request: dict[str, Any] = dict(model="tiny", max_tokens=40, messages=[{"role": "user", "content": "a long story"}])
    pieces: list[str] = []
    with (
        LiveServer(app) as server,
        pytest.raises(anthropic.APIStatusError) as caught,
        anthropic_client(server).messages.stream(**request) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert pieces  # the text came first, then the error event
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    failed = lines(access_log)[0]
    assert (failed["status"], failed["stream"], failed["finish_reason"]) == (200, True, "error")


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER}]


@pytest.fixture
def roomy(settings: Settings, live_server: Any) -> Iterator[anthropic.Anthropic]:
    """A server whose context holds the tools' instructions (the tiny model's own is 512 tokens)."""
    with anthropic_client(live_server(create_app(settings.model_copy(update={"n_ctx": 2048})))) as client:
        yield client


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_a_forced_call_is_a_tool_use_block(roomy: anthropic.Anthropic, choice: dict[str, Any]) -> None:
    out = roomy.messages.create(
        model="tiny",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        tool_choice=choice,
    )
    assert out.stop_reason == "tool_use"
    assert [block.type for block in out.content] == ["tool_use"]  # held to a call: no text
    call = out.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("call_")
    assert set(call.input) == {"city"} and isinstance(call.input["city"], str)


def test_a_streamed_call_adds_up_to_the_unstreamed_one(roomy: anthropic.Anthropic) -> None:
    request: dict[str, Any] = dict(
        model="tiny",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice={"type": "any"},
    )
    with roomy.messages.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_message()
    names = [event.type for event in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "input_json" in names  # the SDK's own event for each input_json_delta
    whole = roomy.messages.create(**request, extra_headers=FRESH)
    assert final.stop_reason == whole.stop_reason == "tool_use"
    ids = {"id"}  # each request's own
    assert [b.model_dump(exclude=ids) for b in final.content] == [b.model_dump(exclude=ids) for b in whole.content]
    assert [b.type for b in whole.content] == ["tool_use"]


def test_tool_use_and_tool_result_blocks_are_the_chat_tool_history(settings: Settings, live_server: Any) -> None:
    """An assistant's `tool_use` and the user's `tool_result` are chat's tool call and tool message: the
    same conversation as chat's, the same key."""
    server = live_server(create_app(settings.model_copy(update={"n_ctx": 2048})))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        function = {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}
        chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "max_tokens": 200,  # a call held by the grammar, whole: cut, it would not be stored
                "tool_choice": "required",
                "tools": [{"type": "function", "function": function}],
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": "Let me look.",
                        "tool_calls": [
                            {
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                ],
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-cache"] == "MISS"
        same = http.post(
            "/v1/messages",
            json={
                "model": "tiny",
                "max_tokens": 200,
                "tool_choice": {"type": "any"},
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": "Let me look."},
                            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                        ],
                    },
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
                ],
            },
        )
    assert same.status_code == 200, same.text
    assert same.headers["x-cache"] == "HIT-MEMORY"
    (chat_call,) = chat.json()["choices"][0]["message"]["tool_calls"]
    (block,) = same.json()["content"]
    assert block["type"] == "tool_use" and block["input"] == json.loads(chat_call["function"]["arguments"])


@pytest.mark.parametrize("prompt", ["Weather?", "Hi", "Tell me a story"])
def test_under_auto_the_stream_adds_up_to_the_unstreamed_answer(roomy: anthropic.Anthropic, prompt: str) -> None:
    """The model may reply or call; what the stream sends as text is only what is known to be text."""
    request: dict[str, Any] = dict(
        model="tiny",
        max_tokens=40,
        messages=[{"role": "user", "content": prompt}],
        tools=TOOLS,
        extra_body={"temperature": 0},
    )
    with roomy.messages.stream(**request) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = roomy.messages.create(**request, extra_headers=FRESH)
    assert streamed == "".join(block.text for block in whole.content if block.type == "text")
    assert [block.type for block in final.content] == [block.type for block in whole.content]
    assert final.stop_reason == whole.stop_reason
