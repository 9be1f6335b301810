"""What the model sees is what the key names: chat templates render before the cache lookup (a template
that writes the date keys by the date), and what users write is text, never control tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llama_cpp import Llama

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine import chat_format
from handler.service.prompts import compose
from tests.helpers.reference import reference_vocab
from tests.tiny_gguf import write_tiny_gguf

DATED = (
    "{{ bos_token }}<|system|>Today is {{ strftime_now('%Y-%m-%d') }}.\n"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONTROL = "a</s>b<s>c"  # the tiny model's end- and begin-of-sequence tokens, written as text


@pytest.fixture
def vocab(tiny_model: Path) -> Iterator[Llama]:
    llama = reference_vocab(tiny_model)
    yield llama
    llama.close()


def tokens(vocab: Llama, text: str, special: bool, bos: bool = True) -> list[int]:
    return list(vocab.tokenize(text.encode(), add_bos=bos, special=special))


def chat(client: TestClient, content: str, **extra: Any) -> Any:
    body = {"model": extra.pop("model", "tiny"), "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
    return client.post("/v1/chat/completions", json={**body, **extra})


def test_a_template_that_writes_the_date_keys_by_the_date(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_gguf(tmp_path / "dated.gguf", chat_template=DATED)
    client = TestClient(create_app(settings.model_copy(update={"model_path": str(model)})))
    days = iter([datetime(2026, 11, 24), datetime(2026, 11, 24), datetime(2026, 11, 25), datetime(2026, 11, 25)])

    class Clock:
        @staticmethod
        def now() -> datetime:
            return next(days)

    monkeypatch.setattr(chat_format, "datetime", Clock)
    sources = [chat(client, "What day is it?", model="dated").headers["x-cache"] for _ in range(4)]
    assert sources == ["MISS", "HIT-MEMORY", "MISS", "HIT-MEMORY"]


def test_slash_chat_reads_control_token_text_as_text(settings: Settings, vocab: Llama) -> None:
    client = TestClient(create_app(settings))
    fallback = chat(client, CONTROL)  # the model has no template: /chat's prompt, as chat
    as_text = tokens(vocab, compose(settings, CONTROL), special=False)
    assert as_text != tokens(vocab, compose(settings, CONTROL), special=True)  # parsing would change it
    assert fallback.json()["usage"]["prompt_tokens"] == len(as_text)
    same = client.post("/chat", json={"prompt": CONTROL, "max_tokens": 4})
    assert same.headers["x-cache"] == "HIT-MEMORY"  # /chat's input is that same text


def test_chat_messages_are_text_while_the_template_markup_is_parsed(
    settings: Settings, tmp_path: Path, vocab: Llama
) -> None:
    template = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    model = write_tiny_gguf(tmp_path / "templated.gguf", chat_template=template)
    client = TestClient(create_app(settings.model_copy(update={"model_path": str(model)})))
    answer = chat(client, CONTROL, model="templated")
    expected = (
        tokens(vocab, "<s><|user|>", special=True, bos=False)
        + tokens(vocab, CONTROL, special=False, bos=False)
        + tokens(vocab, "\n<|assistant|>", special=True, bos=False)
    )
    assert expected[0] == vocab.token_bos()  # the template's own bos_token is the control token
    assert answer.json()["usage"]["prompt_tokens"] == len(expected)
    assert len(expected) > len(tokens(vocab, f"<s><|user|>{CONTROL}\n<|assistant|>", special=True, bos=False))


@pytest.mark.parametrize("parse", [True, False])
def test_raw_completions_parse_control_tokens_as_configured(settings: Settings, vocab: Llama, parse: bool) -> None:
    client = TestClient(create_app(settings.model_copy(update={"completion_parse_special": parse})))
    answer = client.post("/v1/completions", json={"model": "tiny", "prompt": CONTROL, "max_tokens": 4})
    assert answer.json()["usage"]["prompt_tokens"] == len(tokens(vocab, CONTROL, special=parse))


TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"


def test_slash_chat_goes_through_the_models_template_as_a_system_and_a_user_message(
    settings: Settings, tmp_path: Path, vocab: Llama
) -> None:
    model = write_tiny_gguf(tmp_path / "templated.gguf", chat_template=TEMPLATE)
    client = TestClient(create_app(settings.model_copy(update={"model_path": str(model)})))
    first = client.post("/chat", json={"prompt": "Hi", "max_tokens": 4})
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    messages = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": "Hi"}]
    body = {"model": "templated", "max_tokens": 4, "messages": messages}
    same = client.post("/v1/chat/completions", json=body)
    assert same.headers["x-cache"] == "HIT-MEMORY"  # the same text to the model: the same answer
    rendered = f"<s><|system|>{settings.system_prompt}\n<|user|>Hi\n<|assistant|>"
    assert same.json()["usage"]["prompt_tokens"] == len(tokens(vocab, rendered, special=True, bos=False))


def test_prompt_format_prompt_template_gives_any_model_the_seeds_text(
    settings: Settings, tmp_path: Path, vocab: Llama
) -> None:
    model = write_tiny_gguf(tmp_path / "templated.gguf", chat_template=TEMPLATE)
    update = {"model_path": str(model), "prompt_format": "prompt_template"}
    client = TestClient(create_app(settings.model_copy(update=update)))
    answer = chat(client, "Hi", model="templated")
    seed = "System: Answer in rhymes!\n\nHuman: Hi\n\nAssistant:"
    assert compose(settings, "Hi") == seed
    assert answer.json()["usage"]["prompt_tokens"] == len(tokens(vocab, seed, special=False))
    assert client.post("/chat", json={"prompt": "Hi", "max_tokens": 4}).headers["x-cache"] == "HIT-MEMORY"
