"""LoRA adapters on the tiny real model: a tiny adapter written with the `gguf` package, applied by
llama.cpp; answers compared with llama-cpp-python's own `Llama(lora_path=...)` and with each other."""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from handler.app import create_app
from handler.core.config import load_settings
from handler.core.settings import Settings
from handler.core.types import SamplingParams
from handler.engine.scheduler import EngineSettings, Scheduler
from tests.conftest import LiveServer, same_generation
from tests.helpers.reference import greedy_reference
from tests.tiny_gguf import CONTEXT, write_tiny_lora

PROMPTS = ["Once upon a time", "Hello", "The quick brown fox", "1 2 3 4 5"]


@pytest.fixture(scope="session")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lora(tmp_path_factory.mktemp("lora") / "pirate.gguf")


def params(max_tokens: int = 16) -> SamplingParams:
    return SamplingParams(max_tokens, (), 0.0, 0.95, 40, 0.05, 1.0, 0)


def matches(text: str, expected: dict[str, Any], max_tokens: int) -> bool:
    return same_generation(text, expected["choices"][0]["text"], expected["usage"]["completion_tokens"], max_tokens)


@pytest.fixture
def scheduler(tiny_model: Path) -> Iterator[Scheduler]:
    with Scheduler.load(EngineSettings(str(tiny_model), CONTEXT, 512, 4, 1, 0, True)) as engine:
        yield engine


def alone(tiny_model: Path, prompt: list[int], p: SamplingParams, lora: tuple[str, float] | None) -> Any:
    settings = EngineSettings(str(tiny_model), CONTEXT, 512, 1, 1, 0, True, cache_prompt=False)
    with Scheduler.load(settings) as engine:
        return engine.submit(prompt, p, lora=lora).result(timeout=30)


def test_the_adapter_changes_the_answer_as_llama_cpp_python_applies_it(
    scheduler: Scheduler, tiny_model: Path, adapter: Path
) -> None:
    changed = 0
    for prompt in PROMPTS:
        tokens = scheduler.tokenize(prompt, add_bos=True, special=True)
        base = scheduler.submit(tokens, params()).result(timeout=30)
        adapted = scheduler.submit(tokens, params(), lora=(str(adapter), 1.0)).result(timeout=30)
        half = scheduler.submit(tokens, params(), lora=(str(adapter), 0.5)).result(timeout=30)
        assert matches(base.text, greedy_reference(tiny_model, tokens, 16), 16), prompt
        assert matches(adapted.text, greedy_reference(tiny_model, tokens, 16, adapter), 16), prompt
        assert matches(half.text, greedy_reference(tiny_model, tokens, 16, adapter, 0.5), 16), prompt
        changed += adapted.text not in (base.text, half.text)
    assert changed == len(PROMPTS)


def test_sequences_under_different_adapters_never_share_a_step(
    scheduler: Scheduler, tiny_model: Path, adapter: Path
) -> None:
    """Submitted together on 4 slots, base, adapted and half-scaled requests each get their answer alone;
    a cached prefix computed under one adapter never serves another."""
    sets: list[tuple[str, float] | None] = [None, (str(adapter), 1.0), (str(adapter), 0.5)]
    work = [(scheduler.tokenize(p, add_bos=True, special=True), lora) for p in PROMPTS[:2] for lora in sets]
    futures = [scheduler.submit(tokens, params(24), lora=lora) for tokens, lora in work]
    for (tokens, lora), future in zip(work, futures, strict=True):
        assert future.result(timeout=60) == alone(tiny_model, tokens, params(24), lora), lora
    # The same prompts again, one at a time, now that the slots hold cells of every set: each answer is
    # still its own (cells computed under another adapter are never reused).
    for tokens, lora in work:
        assert scheduler.submit(tokens, params(24), lora=lora).result(timeout=30) == alone(
            tiny_model, tokens, params(24), lora
        )


def test_a_base_prefix_is_not_reused_under_the_adapter(tiny_model: Path, adapter: Path) -> None:
    settings = EngineSettings(str(tiny_model), CONTEXT, 512, 1, 1, 0, True)
    with Scheduler.load(settings) as engine:
        tokens = engine.tokenize(PROMPTS[0], add_bos=True, special=True)
        engine.submit(tokens, params()).result(timeout=30)
        reused = engine.stats().prompt_tokens_reused
        adapted = engine.submit(tokens, params(), lora=(str(adapter), 1.0)).result(timeout=30)
        assert engine.stats().prompt_tokens_reused == reused  # the base cells were not used
        assert adapted == alone(tiny_model, tokens, params(), (str(adapter), 1.0))
        engine.submit(tokens, params(), lora=(str(adapter), 1.0)).result(timeout=30)
        assert engine.stats().prompt_tokens_reused == reused + len(tokens) - 1  # its own cells are


def test_an_adapter_llama_cpp_cannot_load_fails_only_its_request(scheduler: Scheduler, tmp_path: Path) -> None:
    from handler.engine.contract import EngineLoadError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    tokens = scheduler.tokenize("Hello", add_bos=True, special=True)
    with pytest.raises(EngineLoadError):
        scheduler.submit(tokens, params(), lora=(str(bad), 1.0)).result(timeout=30)
    assert scheduler.submit(tokens, params(4)).result(timeout=30).completion_tokens == 4


# ---- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def lora_settings(settings: Settings, adapter: Path) -> Settings:
    return settings.model_copy(update={"lora_adapters": {"pirate": str(adapter)}})


@pytest.fixture
def server(lora_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(lora_settings)) as live:
        yield live


def test_the_adapter_is_listed_as_a_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny", "tiny:pirate"]
    assert client.models.retrieve("tiny:pirate").id == "tiny:pirate"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny:parrot")


def test_a_completion_under_the_adapter_is_llama_cpp_pythons(
    client: openai.OpenAI, tiny_model: Path, adapter: Path
) -> None:
    out = client.completions.create(model="tiny:pirate", prompt="Once upon a time", max_tokens=16)
    assert matches(out.choices[0].text, greedy_reference(tiny_model, "Once upon a time", 16, adapter), 16)
    assert out.model == "tiny:pirate"
    half = client.completions.create(
        model="tiny:pirate", prompt="Once upon a time", max_tokens=16, extra_body={"lora_scale": 0.5}
    )
    assert matches(half.choices[0].text, greedy_reference(tiny_model, "Once upon a time", 16, adapter, 0.5), 16)
    base = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16)
    assert matches(base.choices[0].text, greedy_reference(tiny_model, "Once upon a time", 16), 16)
    assert len({out.choices[0].text, half.choices[0].text, base.choices[0].text}) == 3


def test_a_cached_answer_is_never_served_under_another_adapter(client: openai.OpenAI) -> None:
    def ask(model: str, **extra: Any) -> tuple[str, str]:
        raw = client.completions.with_raw_response.create(
            model=model, prompt="Hello", max_tokens=12, extra_body=extra or None
        )
        return raw.headers["x-cache"], raw.parse().choices[0].text

    base_source, base = ask("tiny")
    assert base_source == "MISS"
    adapted_source, adapted = ask("tiny:pirate")
    assert adapted_source == "MISS" and adapted != base
    assert ask("tiny:pirate") == ("HIT-MEMORY", adapted)
    assert ask("tiny") == ("HIT-MEMORY", base)
    assert ask("tiny:pirate", lora_scale=0.5)[0] == "MISS"
    assert ask("tiny:pirate", lora_scale=1.0) == ("HIT-MEMORY", adapted)  # the default, sent explicitly


def test_concurrent_requests_with_and_without_the_adapter(client: openai.OpenAI, lora_settings: Settings) -> None:
    prompts = [
        ("tiny", "Once upon a time"),
        ("tiny:pirate", "Once upon a time"),
        ("tiny:pirate", "Hello"),
        ("tiny", "Hello"),
    ]

    def ask(model: str, prompt: str) -> str:
        out = client.completions.create(model=model, prompt=prompt, max_tokens=24, extra_body={"cache": "off"})
        return out.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda mp: ask(*mp), prompts))
    assert together == [ask(model, prompt) for model, prompt in prompts]
    assert together[0] != together[1]


def test_chat_takes_a_model(server: LiveServer, lora_settings: Settings) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        base = http.post("/chat", json={"prompt": "Hi", "max_tokens": 12})
        adapted = http.post("/chat", json={"prompt": "Hi", "max_tokens": 12, "model": "tiny:pirate"})
        named = http.post("/chat", json={"prompt": "Hi", "max_tokens": 12, "model": "tiny"})
        unknown = http.post("/chat", json={"prompt": "Hi", "model": "tiny:parrot"})
    assert base.status_code == adapted.status_code == named.status_code == 200
    assert base.json() == named.json() and named.headers["x-cache"] == "HIT-MEMORY"
    assert adapted.json() != base.json() and adapted.headers["x-cache"] == "MISS"
    assert unknown.status_code == 404 and "tiny:pirate" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": "x", "lora_scale": 0.5}, 400, "lora_scale"),
        ("/v1/completions", {"model": "tiny:pirate", "prompt": "x", "lora_scale": 11}, 400, "lora_scale"),
        ("/v1/completions", {"model": "tiny:parrot", "prompt": "x"}, 404, "model"),
        ("/v1/embeddings", {"model": "tiny:pirate", "input": "x"}, 400, "model"),
    ],
)
def test_bad_adapter_requests(server: LiveServer, path: str, body: dict[str, Any], status: int, param: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_declared_sha256_is_checked_before_loading(settings: Settings, adapter: Path, live_server: Any) -> None:
    digest = hashlib.sha256(adapter.read_bytes()).hexdigest()
    good = settings.model_copy(
        update={"lora_adapters": {"pirate": str(adapter)}, "lora_adapters_sha256": {"pirate": digest}}
    )
    wrong = good.model_copy(update={"lora_adapters_sha256": {"pirate": "0" * 64}})
    with httpx.Client(base_url=live_server(create_app(good)).url, timeout=60) as http:
        assert (
            http.post("/v1/completions", json={"model": "tiny:pirate", "prompt": "x", "max_tokens": 2}).status_code
            == 200
        )
    with httpx.Client(base_url=live_server(create_app(wrong)).url, timeout=60) as http:
        response = http.post("/v1/completions", json={"model": "tiny:pirate", "prompt": "x", "max_tokens": 2})
        assert response.status_code == 503 and response.json()["error"]["type"] == "model_mismatch"
        base = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert base.status_code == 200  # the model alone still answers


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("lora_adapters:\n  pirate: adapters/pirate.gguf\n  remote: s3://bucket/lora.gguf\n")
    settings = load_settings(config, environ={})
    assert settings.lora_adapters == {
        "pirate": str(tmp_path / "adapters/pirate.gguf"),
        "remote": "s3://bucket/lora.gguf",
    }
    config.write_text("lora_adapters:\n  'a:b': x.gguf\n")
    with pytest.raises(Exception, match="adapter name"):
        load_settings(config, environ={})


def test_the_app_without_adapters_is_unchanged(app: FastAPI) -> None:
    assert app.state.served.ids() == ["tiny"]


def test_a_stream_under_the_adapter_is_its_whole_answer(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny:pirate", prompt="Hello", max_tokens=24, extra_body={"cache": "off"})
    stream = client.completions.create(
        model="tiny:pirate", prompt="Hello", max_tokens=24, stream=True, extra_body={"cache": "off"}
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == whole.choices[0].text


def test_an_s3_adapter_is_fetched_as_the_model_is(settings: Settings) -> None:
    from handler.engine.model import ModelHolder
    from handler.engine.model_files.source import LocalSource, S3Source

    digest = "a" * 64
    holder = ModelHolder(
        settings.model_copy(
            update={
                "lora_adapters": {"remote": "s3://bucket/adapters/lora.gguf", "local": "/x/lora.gguf"},
                "lora_adapters_sha256": {"remote": digest},
            }
        )
    )
    remote, local = holder.adapter_sources["remote"], holder.adapter_sources["local"]
    assert isinstance(remote, S3Source) and (remote.bucket, remote.key) == ("bucket", "adapters/lora.gguf")
    assert isinstance(local, LocalSource)
    assert holder.adapter_identity("remote") == f"sha256:{digest}"  # declared: no request to S3 for a cache key
