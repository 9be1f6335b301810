"""`POST /v1/responses`, OpenAI's Responses API, driven by the official `openai` client over real HTTP (uvicorn)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.api.test_openai import FailsAfterItsText, paced_app
from tests.conftest import LiveServer, client_for, lines

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"format": {"type": "json_schema", "name": "shirt", "schema": SCHEMA, "strict": True}}
FRESH = {"Cache-Control": "no-cache"}  # generated afresh, not read back from an earlier answer


def test_a_response_is_one_output_message(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="tiny", input="Hello", max_output_tokens=10)
    out = raw.parse()
    assert out.object == "response" and out.model == "tiny" and out.id.startswith("resp_")
    assert [item.type for item in out.output] == ["message"]
    message = out.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    assert out.output_text == message.content[0].text  # the SDK's convenience, from the output
    assert out.usage is not None and out.usage.output_tokens <= 10
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens > 0
    cut = raw.headers["x-finish-reason"] == "length"
    assert out.status == ("incomplete" if cut else "completed")
    assert message.status == out.status
    assert (out.incomplete_details is not None and out.incomplete_details.reason == "max_output_tokens") == cut
    assert out.store is False  # nothing is kept, whatever `store` said


def test_max_output_tokens_cuts_the_answer_as_incomplete(client: openai.OpenAI) -> None:
    out = client.responses.create(model="tiny", input="A long story", max_output_tokens=3)
    assert out.status == "incomplete"
    assert out.incomplete_details is not None and out.incomplete_details.reason == "max_output_tokens"
    assert out.usage is not None and out.usage.output_tokens == 3


def test_the_stream_is_the_responses_event_sequence_and_adds_up_to_the_answer(client: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(model="tiny", input="Tell me", max_output_tokens=24, temperature=0)
    raw = client.responses.with_raw_response.create(**request, stream=True)
    assert raw.headers["x-cache"] == "MISS"
    events = list(raw.parse())
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1  # token by token, not one blob
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # 24 tokens of the random model: cut, as OpenAI ends such a stream
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))

    whole = client.responses.create(**request, extra_headers=FRESH)
    assert "".join(deltas) == whole.output_text
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.output_text == whole.output_text and last.response.usage == whole.usage
    assert last.response.id == events[0].response.id and events[0].response.status == "in_progress"
    done = events[-4]
    assert done.type == "response.output_text.done" and done.text == whole.output_text

    again = client.responses.with_raw_response.create(**request)
    assert again.headers["x-cache"] == "HIT-MEMORY"  # the completed stream was stored


def test_the_sdk_stream_helper_reads_a_completed_structured_response(client: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(model="tiny", input="A shirt", max_output_tokens=200, text=JSON_SCHEMA_FORMAT)
    with client.responses.stream(**request) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"  # the grammar ends the answer: it stops, whole
    assert "".join(deltas) == final.output_text
    assert set(json.loads(final.output_text)) == {"color", "ok"}
    assert final.output_text == client.responses.create(**request, extra_headers=FRESH).output_text


@pytest.mark.parametrize("prompt", ["A shirt", "Hi", "x"])
def test_json_schema_output_parses_and_has_the_schemas_keys(client: openai.OpenAI, prompt: str) -> None:
    out = client.responses.create(model="tiny", input=prompt, max_output_tokens=200, text=JSON_SCHEMA_FORMAT)
    assert out.status == "completed"
    value = json.loads(out.output_text)
    assert set(value) == {"color", "ok"} and value["color"] in {"red", "green", "blue"}
    assert isinstance(value["ok"], bool)
    assert out.text is not None and out.text.format is not None and out.text.format.type == "json_schema"


def test_json_object_output_is_a_json_object(client: openai.OpenAI) -> None:
    """Any JSON object; sampled, so that the random model closes it (as on chat)."""
    finished = 0
    for seed in range(4):
        out = client.responses.create(
            model="tiny",
            input="JSON",
            max_output_tokens=60,
            temperature=1.0,
            text={"format": {"type": "json_object"}},
            extra_body={"seed": seed},
        )
        assert out.output_text.startswith("{")
        if out.status == "completed":
            assert isinstance(json.loads(out.output_text), dict)
            finished += 1
    assert finished > 0


def test_a_schema_the_converter_rejects_names_text_format(client: openai.OpenAI) -> None:
    bad = {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "https://example.com/schema.json"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="Hi", text=bad)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "text.format"
    assert "text.format" in error["message"] and "response_format" not in error["message"]


def test_previous_response_id_is_refused_with_the_way_out(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="And then?", previous_response_id="resp_123")
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "previous_response_id"
    assert "stateless" in error["message"] and "earlier turns in `input`" in error["message"]


def test_nothing_is_retrievable(client: openai.OpenAI) -> None:
    made = client.responses.create(model="tiny", input="Hi", max_output_tokens=4, store=True)
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(made.id)
        error = caught.value.body
        assert isinstance(error, dict) and "stateless" in error["message"] and "stores no responses" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frobnicate": 1}, "frobnicate"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"background": True}, "background"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(client: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="x", extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and f"`{param}`" in error["message"]


def test_accepted_parameters_change_nothing(http: httpx.Client) -> None:
    base = {"model": "tiny", "input": "accepted", "max_output_tokens": 5}
    first = http.post("/v1/responses", json=base)
    assert first.status_code == 200, first.text
    extras = {
        "store": True,
        "metadata": {"ticket": "42"},
        "user": "u-1",
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"effort": "low"},
        "truncation": "disabled",
        "include": [],
        "tool_choice": "none",
        "text": {"format": {"type": "text"}},
    }
    second = http.post("/v1/responses", json={**base, **extras})
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "HIT-MEMORY"  # none of them is part of the key
    body = second.json()
    assert body["output"][0]["content"][0]["text"] == first.json()["output"][0]["content"][0]["text"]
    assert body["metadata"] == {"ticket": "42"} and body["store"] is False and body["user"] == "u-1"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": [{"role": "assistant", "content": "x"}]}, "input", "must end with a user message"),
        ({"input": []}, "input", "must end with a user message"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"max_output_tokens": 10_000}, "max_output_tokens", "max_output_tokens is 10000"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input",
            "'input_image'",
        ),
        ({"tools": [{"type": "function", "name": "no spaces"}]}, "tools.0.name", "Tool names"),
        ({"tools": [{"type": "web_search"}]}, "tools.0", "'function'"),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        (
            {
                "input": [
                    {"role": "user", "content": "x"},
                    {"type": "function_call_output", "call_id": "c", "output": "4"},
                ]
            },
            "input.1.call_id",
            "answers a `function_call`",
        ),
    ],
)
def test_bad_requests_are_400s_that_say_why(http: httpx.Client, body: dict[str, Any], param: str, words: str) -> None:
    response = http.post("/v1/responses", json={"model": "tiny", "input": "x", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and words in error["message"], error


def test_an_unknown_model_is_a_404_naming_the_served_one(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-4o", input="x")
    assert isinstance(caught.value.body, dict) and "`tiny`" in caught.value.body["message"]


def test_the_same_request_twice_is_a_memory_hit(http: httpx.Client) -> None:
    body = {"model": "tiny", "input": "twice", "max_output_tokens": 6}
    first = http.post("/v1/responses", json=body)
    second = http.post("/v1/responses", json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-MEMORY")
    assert second.json()["output"][0]["content"] == first.json()["output"][0]["content"]
    changed = http.post("/v1/responses", json={**body, "instructions": "Be terse."})
    assert changed.headers["x-cache"] == "MISS"


def test_a_response_shares_its_answer_with_the_same_chat_completion(http: httpx.Client) -> None:
    """The key is the model's input and sampling, not the route: `instructions` and the input items are the
    system and chat messages `/v1/chat/completions` takes, and the same parameters the same sampling."""
    chat = http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "max_tokens": 8,
            "temperature": 0,
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
        "/v1/responses",
        json={
            "model": "tiny",
            "max_output_tokens": 8,
            "temperature": 0,
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                {  # an earlier response's output message, sent back as it came
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
                },
                {"type": "message", "role": "user", "content": "Again?"},
            ],
        },
    )
    assert same.headers["x-cache"] == "HIT-MEMORY"
    assert same.json()["output"][0]["content"][0]["text"] == chat.json()["choices"][0]["message"]["content"]
    assert same.json()["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]


def test_a_stream_that_fails_after_its_first_piece_ends_with_response_failed(
    settings: Settings, access_log: io.StringIO
) -> None:
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: FailsAfterItsText(load_engine(s))))
    with LiveServer(app) as server:
        stream = client_for(server).responses.create(
            model="tiny", input="a long story", max_output_tokens=40, stream=True
        )
        events = list(stream)
    assert any(event.type == "response.output_text.delta" for event in events)
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed" and last.response.error is not None
    assert last.response.error.code == "server_error"
    failed = lines(access_log)[0]
    assert (failed["status"], failed["stream"], failed["finish_reason"]) == (200, True, "error")


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}]


@pytest.fixture
def roomy(settings: Settings, live_server: Any) -> Iterator[openai.OpenAI]:
    """A server whose context holds the tools' instructions (the tiny model's own is 512 tokens)."""
    yield client_for(live_server(create_app(settings.model_copy(update={"n_ctx": 2048}))))


def test_a_forced_call_is_a_function_call_item(roomy: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(model="tiny", input="Weather in Paris?", max_output_tokens=200, tools=TOOLS)
    out = roomy.responses.create(**request, tool_choice={"type": "function", "name": "get_weather"})
    assert out.status == "completed"
    assert [item.type for item in out.output] == ["function_call"]  # held to a call: no text
    call = out.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city"}  # held to the function's parameters
    assert out.tools[0].type == "function" and out.tools[0].name == "get_weather"


def test_a_streamed_call_adds_up_to_the_unstreamed_one(roomy: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(
        model="tiny", input="Weather?", max_output_tokens=200, tools=TOOLS, tool_choice="required"
    )
    with roomy.responses.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    pieces = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(pieces),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    whole = roomy.responses.create(**request, extra_headers=FRESH)
    assert whole.output[0].type == "function_call" and final.output[0].type == "function_call"
    assert "".join(pieces) == final.output[0].arguments == whole.output[0].arguments
    assert final.output[0].name == whole.output[0].name == "get_weather"


def test_function_call_items_are_the_chat_tool_history(settings: Settings, live_server: Any) -> None:
    """A `function_call` and its `function_call_output` are an assistant's tool call and its tool message:
    the same conversation as chat's, the same key."""
    with httpx.Client(base_url=live_server(create_app(settings.model_copy(update={"n_ctx": 2048}))).url) as http:
        arguments = '{"city":"Paris"}'
        chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "max_tokens": 200,  # a call held by the grammar, whole: cut, it would not be stored
                "tool_choice": "required",
                "tools": [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}],
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": arguments},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                ],
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-cache"] == "MISS"
        same = http.post(
            "/v1/responses",
            json={
                "model": "tiny",
                "max_output_tokens": 200,
                "tool_choice": "required",
                "tools": TOOLS,
                "input": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": arguments},
                    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                ],
            },
        )
    assert same.status_code == 200, same.text
    assert same.headers["x-cache"] == "HIT-MEMORY"
    assert same.json()["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]
    (chat_call,) = chat.json()["choices"][0]["message"]["tool_calls"]
    (call,) = same.json()["output"]
    assert (call["type"], call["name"], call["arguments"]) == (
        "function_call",
        "get_weather",
        chat_call["function"]["arguments"],
    )


@pytest.mark.parametrize("prompt", ["Weather?", "Hi", "Tell me a story"])
def test_under_auto_the_stream_adds_up_to_the_unstreamed_answer(roomy: openai.OpenAI, prompt: str) -> None:
    """The model may reply or call; what the stream sends as text is only what is known to be text."""
    request: dict[str, Any] = dict(model="tiny", input=prompt, max_output_tokens=40, temperature=0, tools=TOOLS)
    events = list(roomy.responses.create(**request, stream=True))
    whole = roomy.responses.create(**request, extra_headers=FRESH)
    streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert streamed == whole.output_text
    assert [item.type for item in events[-1].response.output] == [item.type for item in whole.output]
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_a_client_that_leaves_a_stream_stops_the_generation(settings: Settings, access_log: io.StringIO) -> None:
    """The event streams of both new routes share one lifecycle (`handler.api.event_stream`)."""
    app, made = paced_app(settings)
    body = {"model": "tiny", "input": "a long story", "max_output_tokens": 400, "stream": True}
    with LiveServer(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=30) as response:
            lines_in = response.iter_lines()
            assert next(lines_in) == "event: response.created"
        assert made[0].done.wait(10), "the generation kept running after the client left"
        assert made[0].tokens < 100
        again = httpx.post(f"{server.url}/v1/responses", json={**body, "stream": False}, timeout=60)
    assert again.headers["x-cache"] == "MISS"  # the abandoned answer was not stored
    abandoned = lines(access_log)[0]
    assert (abandoned["status"], abandoned["stream"], abandoned["finish_reason"]) == (200, True, "cancelled")
