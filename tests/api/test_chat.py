"""/chat end to end through uvicorn over real HTTP, on a real model."""

from __future__ import annotations

import httpx

from handler.core.settings import Settings
from handler.service.prompts import compose
from tests.conftest import same_generation
from tests.helpers.reference import reference_completion


def raw_answer(settings: Settings, prompt: str, max_tokens: int) -> tuple[str, int]:
    """The same generation straight from llama-cpp-python, as a reference: its text, its token count."""
    out = reference_completion(settings, prompt=compose(settings, prompt), max_tokens=max_tokens, stop=settings.stop)
    return out["choices"][0]["text"].strip(), out["usage"]["completion_tokens"]


def test_prompt_follows_the_design() -> None:
    settings = Settings(system_prompt="Answer in rhymes!")
    assert compose(settings, "Hi {there}") == "System: Answer in rhymes!\n\nHuman: Hi {there}\n\nAssistant:"


def test_chat_over_http_equals_raw_llama_cpp(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "What is the capital of France?", "max_tokens": 12})
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["text"]
    assert same_generation(response.json()["text"], *raw_answer(settings, "What is the capital of France?", 12), 12)
    assert response.headers["x-request-id"]


def test_max_tokens_defaults_from_config(http: httpx.Client, settings: Settings) -> None:
    response = http.post("/chat", json={"prompt": "Hello"})
    n = settings.max_tokens_default
    assert same_generation(response.json()["text"], *raw_answer(settings, "Hello", n), n)


def test_model_loads_once_and_is_reused(http: httpx.Client) -> None:
    assert http.get("/health").json()["model"]["loaded"] is False
    for prompt in ("one", "two", "three"):
        assert http.post("/chat", json={"prompt": prompt, "max_tokens": 4}).status_code == 200
    model = http.get("/health").json()["model"]
    assert model["loaded"] is True
    assert model["generations"] == 3
    assert model["file"] == "tiny.gguf"
