"""What agent frameworks send and read, over real HTTP: OpenAI's accepted parameters, its error shape (context
overflow as its clients recognise it), token-id embeddings, bodies without a JSON Content-Type, unknown routes."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import pytest
from mangum import Mangum

from handler.app import create_app
from handler.core.settings import Settings
from tests.conftest import FakeLambdaContext, client_for, lambda_body, lambda_event

CHAT = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "compat"}]}
COMPLETION = {"model": "tiny", "max_tokens": 4, "prompt": "compat"}
ROUTES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}
OPENAI_KEYS = {"message", "type", "param", "code"}
FORM = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends

# OpenAI's wording, which litellm's ContextWindowExceededError detection keys on (its first words).
OVERFLOW = re.compile(
    r"This model's maximum context length is (\d+) tokens\. However, you requested (\d+) tokens "
    r"\((\d+) in the (messages|prompt), (\d+) in the completion\)\. "
    r"Please reduce the length of the (messages|prompt) or completion\."
)

# ---- accepted parameters ---------------------------------------------------------------------------------

ACCEPTED: list[dict[str, Any]] = [
    {"store": False},
    {"store": None},
    {"metadata": {"run": "r-1", "agent": "planner"}},
    {"user": "user-42"},
    {"service_tier": "auto"},
    {"parallel_tool_calls": True},
    {"parallel_tool_calls": False},
    {"reasoning_effort": "low"},
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("extra", ACCEPTED, ids=lambda extra: next(iter(extra)) + "=" + str(next(iter(extra.values()))))
def test_openai_parameters_are_accepted(http: httpx.Client, route: str, extra: dict[str, Any]) -> None:
    response = http.post(route, json={**ROUTES[route], **extra})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", ROUTES)
def test_accepted_parameters_do_not_change_the_cache_key(http: httpx.Client, route: str) -> None:
    """None of them changes the answer: the same request with them is a hit on the one without them."""
    base = {**ROUTES[route], "max_tokens": 5}
    assert http.post(route, json=base).headers["x-cache"] == "MISS"
    for extra in (
        {"metadata": {"run": "r-2"}},
        {"user": "someone"},
        {k: v for e in ACCEPTED[2:7] for k, v in e.items()},
    ):
        response = http.post(route, json={**base, **extra})
        assert response.status_code == 200, response.text
        assert response.headers["x-cache"] == "HIT-MEMORY", extra


@pytest.mark.parametrize("route", ROUTES)
def test_store_true_is_a_400_that_says_to_leave_it_unset(http: httpx.Client, route: str) -> None:
    response = http.post(route, json={**ROUTES[route], "store": True})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "store"
    assert "keeps no stored completions" in error["message"] and "unset" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frobnicate": 1}, "frobnicate"),
        ({"service_tier": "platinum"}, "service_tier"),
        ({"reasoning_effort": "maximal"}, "reasoning_effort"),
        ({"metadata": {"k": 1}}, "metadata.k"),
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_unknown_parameters_and_bad_values_are_still_400s_naming_them(
    http: httpx.Client, route: str, extra: dict[str, Any], param: str
) -> None:
    response = http.post(route, json={**ROUTES[route], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# ---- errors in OpenAI's shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, 404),
        ("GET", "/v1/models/gpt-4o", None, 404),
        ("POST", "/v1/chat/completions", {**CHAT, "messages": []}, 400),
        ("POST", "/v1/completions", {**COMPLETION, "n": 9}, 400),
        ("POST", "/v1/completions", {**COMPLETION, "max_tokens": 10_000}, 400),
        ("POST", "/v1/embeddings", {"model": "tiny", "input": ""}, 400),
        ("POST", "/v1/foo", {}, 404),
        ("GET", "/v1/chat/completions", None, 405),
    ],
)
def test_every_v1_error_has_message_type_param_and_code(
    http: httpx.Client, method: str, path: str, body: Any, status: int
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.keys() >= OPENAI_KEYS, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str)


def test_an_unknown_model_names_openais_code(http: httpx.Client) -> None:
    error = http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}).json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found"


def test_context_overflow_is_openais_error_through_the_openai_client(client: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", max_tokens=300, messages=[{"role": "user", "content": "word " * 300}]
        )
    error = caught.value
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert isinstance(error.body, dict)
    message = error.body["message"]
    match = OVERFLOW.fullmatch(message)
    assert match is not None, message
    n_ctx, requested, prompt, noun, completion, noun_again = match.groups()
    assert int(n_ctx) == settings.n_ctx and int(completion) == 300
    assert int(requested) == int(prompt) + 300 > settings.n_ctx
    assert noun == noun_again == "messages"
    assert "this model's maximum context length is" in str(error).lower()  # litellm's test, on the exception


@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_overflow_names_the_prompt(http: httpx.Client, settings: Settings, stream: bool) -> None:
    response = http.post(
        "/v1/completions", json={"model": "tiny", "prompt": "x" * 400, "max_tokens": 300, "stream": stream}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    match = OVERFLOW.fullmatch(error["message"])
    assert match is not None and match.group(4) == "prompt" and int(match.group(1)) == settings.n_ctx


def test_chat_keeps_its_own_error_shape(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "x" * 400, "max_tokens": 200})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.keys() == {"type", "message", "request_id"}
    assert error["type"] == "context_length_exceeded" and f"context of {settings.n_ctx} tokens" in error["message"]
    too_many = http.post("/chat", json={"prompt": "x", "max_tokens": settings.max_tokens_limit + 1}).json()["error"]
    assert too_many.keys() == {"type", "message", "request_id"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"max_tokens": 10_000}, "max_tokens"), ({"max_completion_tokens": 10_000}, "max_completion_tokens")],
)
def test_max_tokens_over_the_limit_names_the_field_sent(
    http: httpx.Client, settings: Settings, extra: dict[str, int], param: str
) -> None:
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"} | extra
    error = http.post("/v1/chat/completions", json=body).json()["error"]
    assert error["param"] == param and error["code"] is None
    assert f"{param} is 10000" in error["message"] and str(settings.max_tokens_limit) in error["message"]


def test_a_prompt_over_max_prompt_chars_names_its_field(settings: Settings, live_server: Any) -> None:
    app = create_app(settings.model_copy(update={"max_prompt_chars": 50}))
    with httpx.Client(base_url=live_server(app).url, timeout=60) as http:
        chat = http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "y" * 60}]})
        completion = http.post("/v1/completions", json={**COMPLETION, "prompt": "y" * 60})
        own = http.post("/chat", json={"prompt": "y" * 60})
    assert chat.status_code == completion.status_code == own.status_code == 400
    assert chat.json()["error"]["param"] == "messages"
    assert completion.json()["error"]["param"] == "prompt"
    assert "limit of 50" in completion.json()["error"]["message"]
    assert own.json()["error"].keys() == {"type", "message", "request_id"}


def test_a_missing_api_key_is_openais_invalid_api_key(settings: Settings, live_server: Any) -> None:
    server = live_server(create_app(settings.model_copy(update={"api_keys": ["k" * 20]})))
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_api_key"
    assert isinstance(caught.value.body, dict) and caught.value.body.keys() >= OPENAI_KEYS


# ---- embeddings of token ids ---------------------------------------------------------------------------


def tokens_of(http: httpx.Client, text: str) -> list[int]:
    """The text's tokens as an embedding of the text takes them: with the begin-of-sequence token."""
    response = http.post("/tokenize", json={"content": text, "add_special": True, "parse_special": False})
    return list(response.json()["tokens"])


def test_token_ids_are_embedded_as_those_tokens_under_a_key_of_their_own(http: httpx.Client) -> None:
    text = "the quick brown fox"
    ids = tokens_of(http, text)
    as_text = http.post("/v1/embeddings", json={"model": "tiny", "input": text, "encoding_format": "float"})
    as_ids = http.post("/v1/embeddings", json={"model": "tiny", "input": ids, "encoding_format": "float"})
    assert as_text.status_code == as_ids.status_code == 200, as_ids.text
    assert as_ids.headers["x-cache"] == "MISS"  # the text's vector is cached, but under the text's key
    assert as_ids.json()["data"][0]["embedding"] == as_text.json()["data"][0]["embedding"]
    assert as_ids.json()["usage"]["prompt_tokens"] == len(ids)
    again = http.post("/v1/embeddings", json={"model": "tiny", "input": ids, "encoding_format": "float"})
    assert again.headers["x-cache"] == "HIT-MEMORY"


def test_token_ids_are_taken_as_they_are_nothing_added(http: httpx.Client) -> None:
    """Without the begin-of-sequence token the model sees other tokens: another vector, one token fewer."""
    ids = tokens_of(http, "lazy dog")
    whole = http.post("/v1/embeddings", json={"model": "tiny", "input": ids, "encoding_format": "float"}).json()
    less = http.post("/v1/embeddings", json={"model": "tiny", "input": ids[1:], "encoding_format": "float"}).json()
    assert less["usage"]["prompt_tokens"] == len(ids) - 1
    assert less["data"][0]["embedding"] != whole["data"][0]["embedding"]


def test_lists_of_token_ids_through_the_openai_client(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = ["first text", "second text"]
    ids = [tokens_of(http, text) for text in texts]
    by_ids = client.embeddings.create(model="tiny", input=ids)
    by_text = client.embeddings.create(model="tiny", input=texts)
    assert [d.embedding for d in by_ids.data] == [d.embedding for d in by_text.data]
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ([1, 2, 10**9], "1000000000"),
        ([[3, 4], [5, 10**9]], "Input 1"),
        ([1, -2], "token ids"),
        (["a", 1], "token ids"),
        ([[1, 2], "b"], "token ids"),
        ([True, 2], "token ids"),
        ([[]], "Input 0 is empty"),
    ],
)
def test_bad_token_ids_are_400s_naming_input(http: httpx.Client, given: Any, words: str) -> None:
    response = http.post("/v1/embeddings", json={"model": "tiny", "input": given})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and words in error["message"], error


def test_an_id_outside_the_vocabulary_says_whose_ids_to_send(http: httpx.Client) -> None:
    error = http.post("/v1/embeddings", json={"model": "tiny", "input": [100_256]}).json()["error"]
    assert "vocabulary" in error["message"] and "check_embedding_ctx_length=False" in error["message"]


def test_token_ids_longer_than_the_embedding_context_are_openais_overflow(http: httpx.Client) -> None:
    error = http.post("/v1/embeddings", json={"model": "tiny", "input": [[5] * 600]}).json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert "this model's maximum context length is" in error["message"].lower() and "600 tokens" in error["message"]


# ---- bodies without a JSON Content-Type ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/octet-stream"]
)
@pytest.mark.parametrize(
    ("path", "body"), [("/chat", {"prompt": "form", "max_tokens": 3}), ("/v1/chat/completions", CHAT)]
)
def test_a_json_body_is_read_as_json_whatever_its_content_type(
    http: httpx.Client, path: str, body: dict[str, Any], content_type: str
) -> None:
    sent = httpx.Request("POST", "/", json=body).content
    response = http.post(path, content=sent, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    same = http.post(path, json=body).json()
    assert without_ids(response.json()) == without_ids(same)


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in ("id", "created")}


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions", "/v1/embeddings", "/tokenize"])
def test_a_body_that_is_not_json_is_a_415_saying_what_to_send(http: httpx.Client, path: str) -> None:
    response = http.post(path, content=b"prompt=hi&max_tokens=3", headers=FORM)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert "Content-Type: application/json" in error["message"]
    assert error["type"] == "unsupported_media_type"
    assert ("code" in error) == path.startswith("/v1/")  # each API's own error shape


def test_a_form_body_to_a_route_not_served_is_still_a_404(http: httpx.Client) -> None:
    assert http.post("/v1/foo", content=b"a=b", headers=FORM).status_code == 404


def test_a_form_content_type_through_mangum(app: Any) -> None:
    handler = Mangum(app, lifespan="off")
    good = lambda_event("apigw-http-v2", {"prompt": "mangum", "max_tokens": 3}, headers=FORM)
    assert handler(good, FakeLambdaContext())["statusCode"] == 200
    bad = lambda_event("apigw-http-v2", "prompt=mangum", headers=FORM)
    response = handler(bad, FakeLambdaContext())
    assert response["statusCode"] == 415 and "application/json" in lambda_body(response)["error"]["message"]


# ---- routes that do not exist --------------------------------------------------------------------------


def test_an_unknown_v1_route_names_itself_and_the_routes_in_openais_shape(http: httpx.Client) -> None:
    response = http.post("/v1/foo", json={})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"].startswith("POST /v1/foo is not served here; routes: POST /chat, ")
    for route in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "GET /v1/models"):
        assert route in error["message"]
    assert error["param"] is None and error["code"] is None


def test_an_unknown_route_elsewhere_is_in_the_services_shape(http: httpx.Client) -> None:
    response = http.delete("/nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (
        error["message"].startswith("DELETE /nope is not served here; routes: ") and "GET /health" in error["message"]
    )
    assert error.keys() == {"type", "message", "request_id"}
