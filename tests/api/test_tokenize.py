"""`POST /tokenize` and `POST /detokenize`, llama-server's shapes, on the tiny model over real HTTP.

The tiny vocabulary is the 256 bytes and 4 control tokens, with no token for SentencePiece's space
marker: the space the tokenizer writes in front of a text (and in place of its spaces) comes out as
the marker's UTF-8 bytes, U+2581, where a real vocabulary's pieces turn it back into a space.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from handler.app import create_app
from handler.core.settings import Settings
from tests.conftest import LiveServer
from tests.helpers.reference import reference_vocab

TEXTS = ["Hello world", "Hé ✓ 日本", "<s>x</s>", "a"]
MARK = "\u2581"


@pytest.fixture
def http(app: FastAPI, live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server(app).url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Any:
    return reference_vocab(tiny_model)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize(("add_special", "parse_special"), [(False, True), (True, True), (False, False)])
def test_tokens_are_llama_cpps(
    http: httpx.Client, reference: Any, text: str, add_special: bool, parse_special: bool
) -> None:
    response = http.post(
        "/tokenize", json={"content": text, "add_special": add_special, "parse_special": parse_special}
    )
    assert response.status_code == 200
    assert "x-cache" not in response.headers  # never cached
    expected = reference.tokenize(text.encode(), add_bos=add_special, special=parse_special)
    assert response.json() == {"tokens": expected}


def test_defaults_are_llama_servers(http: httpx.Client, reference: Any) -> None:
    """add_special false, parse_special true, with_pieces false."""
    assert http.post("/tokenize", json={"content": "<s>x"}).json() == {
        "tokens": reference.tokenize(b"<s>x", add_bos=False, special=True)
    }


def test_pieces_are_text_or_bytes(http: httpx.Client) -> None:
    tokens = http.post("/tokenize", json={"content": "Hé<s>", "with_pieces": True}).json()["tokens"]
    assert all(set(t) == {"id", "piece"} for t in tokens)
    pieces = [t["piece"] for t in tokens]
    assert "H" in pieces and "<s>" in pieces  # whole characters and control tokens as text
    assert [0xC3] in pieces and [0xA9] in pieces  # "é" is two byte tokens: neither is UTF-8 on its own
    data = b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in pieces)
    assert data.decode() == f"{MARK}Hé<s>"
    ids = [t["id"] for t in tokens]
    assert http.post("/tokenize", json={"content": "Hé<s>"}).json()["tokens"] == ids


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(http: httpx.Client, reference: Any, text: str) -> None:
    tokens = http.post("/tokenize", json={"content": text}).json()["tokens"]
    content = http.post("/detokenize", json={"tokens": tokens}).json()["content"]
    assert content == reference.detokenize(tokens, special=True).decode("utf-8", errors="replace")
    # the text, less the space markers (in front, in place of spaces, and after a control token)
    assert content.replace(MARK, " ").lstrip(" ") == text.replace("<s>x", "<s> x")


def test_detokenize_writes_control_tokens_and_replaces_broken_bytes(http: httpx.Client) -> None:
    assert http.post("/detokenize", json={"tokens": [1, 0x61 + 4, 2]}).json() == {"content": "<s>a</s>"}
    assert http.post("/detokenize", json={"tokens": [0xC3 + 4]}).json() == {"content": "\ufffd"}  # half a character
    assert http.post("/detokenize", json={"tokens": []}).json() == {"content": ""}


@pytest.mark.parametrize("tokens", [[260], [-1], [5, 100000]])
def test_ids_outside_the_vocabulary_are_400(http: httpx.Client, tokens: list[int]) -> None:
    response = http.post("/detokenize", json={"tokens": tokens})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tokens" and "vocabulary" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {}),
        ("/tokenize", {"content": 5}),
        ("/tokenize", {"content": "x", "frobnicate": True}),
        ("/detokenize", {"tokens": ["a"]}),
        ("/detokenize", {}),
    ],
)
def test_malformed_bodies_are_422(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    assert http.post(path, json=body).status_code == 422


def test_they_load_the_model_and_need_the_api_key(settings: Settings) -> None:
    key = "k" * 24
    app = create_app(settings.model_copy(update={"api_keys": [key], "max_body_bytes": 1024}))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/tokenize", json={"content": "x"}).status_code == 401
        assert client.post("/detokenize", json={"tokens": [5]}).status_code == 401
        assert not app.state.model.loaded
        ok = client.post("/tokenize", json={"content": "x"}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and app.state.model.loaded
        big = client.post("/tokenize", json={"content": "x" * 2000}, headers={"X-API-Key": key})
        assert big.status_code == 413
