"""`POST /v1/embeddings` on the tiny real model, through the official `openai` client over real HTTP.

Vectors are compared with llama-cpp-python's own `Llama.embed` on the same file, to the bit.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import httpx
import llama_cpp
import openai
import pytest

from handler.app import create_app
from handler.cache.entry import SCHEMA_VERSION, Entry, decode, encode
from handler.cache.keys import cache_key, embedding_key
from handler.core.settings import Settings
from handler.core.types import Completion, Embedding, FinishReason
from tests.conftest import LiveServer, client_for
from tests.helpers.reference import reference_embedding, reference_vocab
from tests.tiny_gguf import write_tiny_gguf

TEXTS = ["Hello world", "x", "Ünïcødé ✓ 日本語", "<s> is text here"]


MEAN = {"pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN}


def test_a_vector_is_llama_cpp_pythons_embed(client: openai.OpenAI, tiny_model: Path) -> None:
    """The tiny model declares no pooling (llama.cpp would give a vector per token): mean pooling, as
    `Llama(pooling_type=MEAN).embed` gives it, not normalized, as `embed` leaves it by default."""
    out = client.embeddings.create(model="tiny", input="Hello world", encoding_format="float")
    expected = reference_embedding(tiny_model, "Hello world", **MEAN)
    assert len(expected) == 64 and isinstance(expected[0], float)
    assert out.data[0].embedding == expected
    assert out.object == "list" and out.model == "tiny" and out.data[0].object == "embedding"
    assert out.data[0].index == 0
    tokens = reference_vocab(tiny_model).tokenize(b"Hello world")
    assert out.usage.prompt_tokens == out.usage.total_tokens == len(tokens)


def test_base64_is_float32_as_openai_sends_it(client: openai.OpenAI, http: httpx.Client, tiny_model: Path) -> None:
    """The client asks for base64 by default and decodes it; the bytes are little-endian float32."""
    expected = reference_embedding(tiny_model, "Hello world", **MEAN)
    assert client.embeddings.create(model="tiny", input="Hello world").data[0].embedding == expected
    raw = http.post("/v1/embeddings", json={"model": "tiny", "input": "Hello world", "encoding_format": "base64"})
    assert raw.status_code == 200
    encoded = raw.json()["data"][0]["embedding"]
    import base64

    assert list(struct.unpack("<64f", base64.b64decode(encoded))) == expected


def test_a_list_is_one_vector_per_input_in_order(client: openai.OpenAI, tiny_model: Path) -> None:
    out = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in out.data] == list(range(len(TEXTS)))
    for text, data in zip(TEXTS, out.data, strict=True):
        assert data.embedding == reference_embedding(tiny_model, text, **MEAN), text
    vocab = reference_vocab(tiny_model)
    assert out.usage.prompt_tokens == sum(len(vocab.tokenize(t.encode())) for t in TEXTS)


@pytest.mark.parametrize("pooling", [gguf.PoolingType.CLS, gguf.PoolingType.LAST, gguf.PoolingType.MEAN])
def test_a_model_that_declares_its_pooling_gets_embeds_defaults(
    tmp_path: Path, settings: Settings, pooling: gguf.PoolingType
) -> None:
    """`embedding_pooling: model` is what llama.cpp does for `Llama(embedding=True).embed`, untouched."""
    model = write_tiny_gguf(tmp_path / "pooled.gguf", pooling=pooling)
    settings = settings.model_copy(update={"model_path": str(model)})
    with LiveServer(create_app(settings)) as server:
        out = client_for(server).embeddings.create(model="pooled", input="Hello world", encoding_format="float")
    assert out.data[0].embedding == reference_embedding(model, "Hello world")


@pytest.mark.parametrize(("pooling", "kind"), [("cls", "CLS"), ("last", "LAST")])
def test_configured_pooling(settings: Settings, tiny_model: Path, pooling: str, kind: str) -> None:
    settings = settings.model_copy(update={"embedding_pooling": pooling})
    with LiveServer(create_app(settings)) as server:
        out = client_for(server).embeddings.create(model="tiny", input="Hello world", encoding_format="float")
    expected = reference_embedding(
        tiny_model, "Hello world", pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{kind}")
    )
    assert out.data[0].embedding == expected


def test_normalized_vectors_are_embeds_normalized(settings: Settings, tiny_model: Path) -> None:
    settings = settings.model_copy(update={"embedding_normalize": True})
    with LiveServer(create_app(settings)) as server:
        out = client_for(server).embeddings.create(model="tiny", input=TEXTS[:2], encoding_format="float")
    for text, data in zip(TEXTS[:2], out.data, strict=True):
        assert data.embedding == reference_embedding(tiny_model, text, normalize=True, **MEAN)
    assert abs(sum(v * v for v in out.data[0].embedding) - 1.0) < 1e-9


def test_each_input_is_cached_under_its_own_key(settings: Settings, tiny_model: Path) -> None:
    app = create_app(settings)
    with LiveServer(app) as server:
        client = client_for(server)
        first = client.embeddings.with_raw_response.create(model="tiny", input="Hello world", encoding_format="float")
        assert first.headers["x-cache"] == "MISS"
        again = client.embeddings.with_raw_response.create(model="tiny", input="Hello world", encoding_format="float")
        assert again.headers["x-cache"] == "HIT-MEMORY"
        assert again.parse().data[0].embedding == first.parse().data[0].embedding
        # one cached, one new: computed only for the new one, and both come back in order
        computed = app.state.model.engine.stats().embeddings
        mixed = client.embeddings.with_raw_response.create(model="tiny", input=["x", "Hello world"])
        assert mixed.headers["x-cache"] == "MISS"
        assert app.state.model.engine.stats().embeddings == computed + 1
        assert mixed.parse().data[1].embedding == first.parse().data[0].embedding
        both = client.embeddings.with_raw_response.create(model="tiny", input=["Hello world", "x"])
        assert both.headers["x-cache"] == "HIT-MEMORY"
        assert both.parse().usage.prompt_tokens == mixed.parse().usage.prompt_tokens
        # the same text as a completion prompt is another kind of answer
        completion = client.completions.with_raw_response.create(model="tiny", prompt="Hello world", max_tokens=4)
        assert completion.headers["x-cache"] == "MISS"
        no_cache = client.embeddings.with_raw_response.create(
            model="tiny", input="Hello world", extra_headers={"Cache-Control": "no-cache"}
        )
        assert no_cache.headers["x-cache"] == "MISS"
    # a new container finds the vectors on disk; the model is never loaded for them
    fresh = create_app(settings)
    with LiveServer(fresh) as server:
        out = client_for(server).embeddings.with_raw_response.create(
            model="tiny", input="Hello world", encoding_format="float"
        )
        assert out.headers["x-cache"] == "HIT-DISK"
        assert out.parse().data[0].embedding == reference_embedding(tiny_model, "Hello world", **MEAN)
        assert not fresh.state.model.loaded
    # another normalization is another vector
    normalized = create_app(settings.model_copy(update={"embedding_normalize": True}))
    with LiveServer(normalized) as server:
        out = client_for(server).embeddings.with_raw_response.create(model="tiny", input="Hello world")
        assert out.headers["x-cache"] == "MISS"


def test_entries_are_read_back_only_as_their_own_kind() -> None:
    vector = (0.1, -2.5, 3.0000001192092896, 1e-30)
    entry = Entry(Embedding(vector, 3), 1.0)
    key = embedding_key("sha256:x", "hi", "model", False)
    read = decode(key, encode(key, entry))
    assert read is not None and read.value == Embedding(vector, 3) and read.value.vector == vector
    assert decode("another key", encode(key, entry)) is None
    # a completion entry (as older releases wrote them, without a kind) never reads as a vector, nor the reverse
    completion = encode(key, Entry(Completion("text", FinishReason.STOP, 1, 1), 1.0))
    assert b'"kind"' not in completion
    read_completion = decode(key, completion)
    assert read_completion is not None and isinstance(read_completion.value, Completion)
    for damaged in (
        encode(key, entry).replace(b'"v":1', b'"v":2'),
        encode(key, entry).replace(b'"kind":"embedding"', b'"kind":"other"'),
        encode(key, entry).replace(b'"vector":"', b'"vector":"!'),
    ):
        assert decode(key, damaged) is None
    assert '"v":' + str(SCHEMA_VERSION) in completion.decode()
    # the keys of the two kinds never meet
    params_key = cache_key("sha256:x", "hi", _params(), 512)
    assert params_key != key
    assert embedding_key("sha256:x", "hi", "model", True) != key
    assert embedding_key("sha256:x", "hi", "mean", False) != key
    assert embedding_key("sha256:y", "hi", "model", False) != key


def _params() -> Any:
    from handler.core.types import SamplingParams

    return SamplingParams(16, (), 0.0, 0.95, 40, 0.05, 1.0, 0)


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"model": "tiny", "input": "hi", "dimensions": 32}, 400, "dimensions", "64"),
        ({"model": "gpt-4o", "input": "hi"}, 404, "model", "tiny"),
        ({"model": "tiny", "input": []}, 400, "input", "at least one"),
        ({"model": "tiny", "input": ""}, 400, "input", "empty"),
        ({"model": "tiny", "input": ["a", ""]}, 400, "input", "Input 1"),
        ({"model": "tiny", "input": ["a"] * 5}, 400, "input", "limit of 4"),
        ({"model": "tiny", "input": "y" * 101}, 400, "input", "101 characters"),
        ({"model": "tiny", "input": [[1, 2, 10**9]]}, 400, "input", "outside the model's vocabulary"),
        ({"model": "tiny", "input": ["a", 3]}, 400, "input", "token ids"),
        ({"model": "tiny", "input": "hi", "encoding_format": "int8"}, 400, "encoding_format", "float"),
        ({"model": "tiny", "input": "hi", "n": 2}, 400, "n", "Extra"),
    ],
)
def test_bad_requests(
    settings: Settings, body: dict[str, Any], status: int, param: str, words: str, live_server: Any
) -> None:
    settings = settings.model_copy(update={"embedding_max_inputs": 4, "max_prompt_chars": 100})
    with httpx.Client(base_url=live_server(create_app(settings)).url, timeout=60) as http:
        response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_the_models_own_dimensions_are_accepted(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model="tiny", input="hi", dimensions=64, encoding_format="float")
    assert len(out.data[0].embedding) == 64


def test_an_input_longer_than_the_embedding_context_is_a_400_with_the_numbers(
    client: openai.OpenAI, settings: Settings
) -> None:
    """One input is decoded in one llama_decode: at most n_batch tokens (here n_ctx, 512)."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input=["short", "z" * 600])
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "context_length_exceeded" and error["param"] == "input"
    # BOS, the space marker's 3 byte tokens, then 600
    assert "Input 1 is 604 tokens" in error["message"] and "512" in error["message"]


def test_api_keys_are_checked(settings: Settings, live_server: Any) -> None:
    key = "k" * 20
    server = live_server(create_app(settings.model_copy(update={"api_keys": [key]})))
    with pytest.raises(openai.AuthenticationError):
        client_for(server).embeddings.create(model="tiny", input="hi")
    authorized = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    assert len(authorized.embeddings.create(model="tiny", input="hi").data) == 1


def test_generation_answers_do_not_change_next_to_embeddings(client: openai.OpenAI, tiny_model: Path) -> None:
    """Embeddings decode on a context of their own, between the generation's steps."""
    import concurrent.futures

    alone = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=24, extra_body={"cache": "off"}
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        generations = [
            pool.submit(
                client.completions.create,
                model="tiny",
                prompt="Once upon a time",
                max_tokens=24,
                extra_body={"cache": "off"},
            )
            for _ in range(2)
        ]
        vectors = [
            pool.submit(
                client.embeddings.create,
                model="tiny",
                input=TEXTS,
                encoding_format="float",
                extra_body={"cache": "off"},
            )
            for _ in range(2)
        ]
        for future in generations:
            assert future.result().choices[0].text == alone.choices[0].text
        for future in vectors:
            assert future.result().data[0].embedding == reference_embedding(tiny_model, TEXTS[0], **MEAN)
