"""`n` choices on /v1/chat/completions and /v1/completions, driven by the official `openai` client over real
HTTP (uvicorn) on the tiny model: sampled each with its own seed from one prompt decoded once, cached as one
answer, streamed per index, bounded by `max_choices`."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from handler.app import create_app
from handler.core.settings import Settings
from handler.core.types import FinishReason
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import LiveServer, PacedEngine, WrappedEngine, client_for, replaced_result

CHAT = [{"role": "user", "content": "Tell me a story about a cat"}]
# long enough that decoding it once or n times shows in the engine's counters (the tiny model's tokens are bytes)
LONG_PROMPT = "The quick brown fox jumps over the lazy dog and runs far away into the woods."


def texts(answer: Any) -> list[str]:
    return [c.message.content if hasattr(c, "message") else c.text for c in answer.choices]


def sampled(client: openai.OpenAI, n: int = 3, **extra: Any) -> Any:
    body: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0.8, "seed": 11}
    return client.chat.completions.with_raw_response.create(**{**body, **extra}, n=n)


def test_n_choices_are_sampled_each_with_its_own_seed(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0.8, seed=5, n=3, logprobs=0
    )
    assert raw.headers["x-cache"] == "MISS"
    out = raw.parse()
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len(set(texts(out))) > 1  # three seeds, not one answer three times
    for choice in out.choices:
        assert choice.finish_reason in ("stop", "length") and choice.logprobs is not None
    # no stop strings on a raw completion: one log-probability per generated token, so these count each choice
    per_choice = [len(c.logprobs.tokens or []) for c in out.choices]
    assert out.usage is not None and out.usage.completion_tokens == sum(per_choice) > 0
    one = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0.8, seed=5)
    assert out.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_n_choices_are_cached_as_one_answer(client: openai.OpenAI) -> None:
    first = sampled(client)
    assert first.headers["x-cache"] == "MISS"
    made = first.parse()
    assert [c.index for c in made.choices] == [0, 1, 2] and len(set(texts(made))) > 1
    again = sampled(client)
    assert again.headers["x-cache"] == "HIT-MEMORY"
    hit = again.parse()
    assert [c.model_dump() for c in hit.choices] == [c.model_dump() for c in made.choices]
    assert hit.usage == made.usage
    # n and the seeds are part of the key
    assert sampled(client, n=2).headers["x-cache"] == "MISS"
    assert sampled(client, seed=12).headers["x-cache"] == "MISS"
    assert sampled(client, n=1).headers["x-cache"] == "MISS"


def test_the_choices_are_one_entry_on_disk_too(settings: Settings) -> None:
    with LiveServer(create_app(settings)) as server:
        made = sampled(client_for(server)).parse()
    with LiveServer(create_app(settings)) as server:  # a new container: its memory empty, the same disk
        again = sampled(client_for(server))
        assert again.headers["x-cache"] == "HIT-DISK"
        assert [c.model_dump() for c in again.parse().choices] == [c.model_dump() for c in made.choices]


class CutSecondChoice(WrappedEngine):
    """Every second generation submitted (a request's second choice) comes back cut by the deadline."""

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.submitted = 0

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        future = self.real.submit(tokens, params, **kwargs)
        if self.submitted % 2:
            return future
        return replaced_result(future, lambda made: dataclasses.replace(made, finish_reason=FinishReason.TIME_LIMIT))


def test_an_answer_is_stored_only_when_every_choice_is_whole(settings: Settings) -> None:
    app = create_app(settings, model=ModelHolder(settings, loader=lambda s: CutSecondChoice(load_engine(s))))
    with LiveServer(app) as server:
        client = client_for(server)
        first = sampled(client, n=2)
        assert first.headers["x-cache"] == "MISS" and first.headers["x-finish-reason"] == "time_limit"
        assert [c.finish_reason for c in first.parse().choices][1] == "length"  # cut short, as OpenAI says it
        assert sampled(client, n=2).headers["x-cache"] == "MISS"  # not stored: one choice was not whole


def test_at_temperature_0_every_choice_is_the_greedy_answer(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0}
    out = client.chat.completions.create(**body, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    answers = texts(out)
    assert len(answers) == 3 and len(set(answers)) == 1
    one = client.chat.completions.create(**body)
    assert answers[0] == one.choices[0].message.content
    assert out.usage is not None and one.usage is not None
    assert out.usage.completion_tokens == 3 * one.usage.completion_tokens


@pytest.mark.parametrize("n", [0, 9, 1000])
def test_n_outside_the_limit_is_a_400_naming_n(client: openai.OpenAI, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, n=n)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "n"


def test_the_limit_is_a_setting_and_max_pending_generations_bounds_it_too(settings: Settings) -> None:
    for update, setting in (({"max_choices": 2}, "max_choices"), ({"max_pending_generations": 2}, "max_pending")):
        with LiveServer(create_app(settings.model_copy(update=update))) as server:
            client = client_for(server)
            assert len(client.completions.create(model="tiny", prompt="a", max_tokens=2, n=2).choices) == 2
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model="tiny", prompt="a", max_tokens=2, n=3)
            error = caught.value.body
            assert isinstance(error, dict) and error["param"] == "n" and "`n` is 3" in error["message"]
            assert setting in error["message"]


def test_the_prompt_is_decoded_once_for_all_choices(app: FastAPI, client: openai.OpenAI) -> None:
    client.completions.create(model="tiny", prompt="warm up", max_tokens=1)  # loads the model
    engine = app.state.model.engine
    before = engine.stats()
    n = 4
    out = client.completions.create(model="tiny", prompt=LONG_PROMPT, max_tokens=4, temperature=0.8, seed=3, n=n)
    after = engine.stats()
    prompt = out.usage.prompt_tokens
    assert prompt > 60
    assert after.prompt_tokens - before.prompt_tokens == n * prompt  # every choice had the whole prompt
    reused = after.prompt_tokens_reused - before.prompt_tokens_reused
    # the first choice decodes the prompt; the others copy its cells, all but the last token (its logits)
    assert (n - 1) * (prompt - 1) <= reused < (n - 1) * (prompt - 1) + prompt // 2
    # what was decoded: the prompt once, each other choice's last prompt token, the generated tokens fed back
    # (and a few prompt-lookup drafts while the first choice decodes alone); n prompts would be far more
    assert after.batch_tokens - before.batch_tokens <= prompt + (n - 1) + out.usage.completion_tokens + 4 * n


def test_without_prefix_reuse_each_choice_decodes_the_prompt(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"reuse_prompt_prefix": False}))
    with LiveServer(app) as server:
        client = client_for(server)
        client.completions.create(model="tiny", prompt="warm up", max_tokens=1)
        before = app.state.model.engine.stats()
        out = client.completions.create(model="tiny", prompt=LONG_PROMPT, max_tokens=4, temperature=0.8, n=3)
        after = app.state.model.engine.stats()
    assert len(out.choices) == 3
    assert after.prompt_tokens_reused == before.prompt_tokens_reused
    assert after.batch_tokens - before.batch_tokens >= 3 * out.usage.prompt_tokens


def streamed(client: openai.OpenAI, create: Any, **body: Any) -> tuple[dict[int, str], dict[int, str], Any]:
    """Each index's text put together from its deltas, each index's finish reason, and the usage chunk."""
    pieces: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in create(**body, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = getattr(choice, "delta", None)
            text = delta.content if delta is not None else choice.text
            pieces[choice.index] = pieces.get(choice.index, "") + (text or "")
            if choice.finish_reason is not None:
                assert choice.index not in finish  # one last chunk per choice
                finish[choice.index] = choice.finish_reason
    return pieces, finish, usage


def test_streamed_choices_add_up_per_index_to_the_unstreamed_ones_at_temperature_0(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 16, "temperature": 0, "n": 3}
    pieces, finish, usage = streamed(client, client.chat.completions.create, **body)
    fresh = client.chat.completions.create(**body, extra_headers={"Cache-Control": "no-cache"})
    assert pieces == {i: c.message.content for i, c in enumerate(fresh.choices)}
    assert finish == {i: c.finish_reason for i, c in enumerate(fresh.choices)}
    assert usage == fresh.usage


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_streamed_sampled_choices_keep_their_indices(client: openai.OpenAI, route: str) -> None:
    """Different texts per index: a stream that mixed them up would not add up to the stored choices."""
    if route == "chat":
        create: Any = client.chat.completions.create
        body: dict[str, Any] = {"messages": CHAT}
    else:
        create, body = client.completions.create, {"prompt": "Once upon a time"}
    body = {**body, "model": "tiny", "max_tokens": 16, "temperature": 0.9, "seed": 21, "n": 3}
    pieces, finish, usage = streamed(client, create, **body)
    assert len(set(pieces.values())) > 1
    stored = create(**body)  # the completed stream was stored: these are the streamed choices
    assert pieces == dict(enumerate(texts(stored)))
    assert finish == {i: c.finish_reason for i, c in enumerate(stored.choices)}
    assert usage == stored.usage
    replay, _, _ = streamed(client, create, **body)  # a hit streams each choice whole
    assert replay == pieces


def test_identical_requests_for_n_choices_join_one_generation(settings: Settings) -> None:
    def loader(engine_settings: Any) -> PacedEngine:  # slow enough that the second arrives while the first runs
        return PacedEngine(load_engine(engine_settings), per_token_s=0.01)

    app = create_app(settings, model=ModelHolder(settings, loader=loader))
    body = {"model": "tiny", "prompt": "joined", "max_tokens": 12, "temperature": 0.8, "seed": 1, "n": 3}
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        generations = app.state.model.generations
        start = threading.Barrier(2)

        def ask(_: int) -> httpx.Response:
            start.wait()
            return http.post("/v1/completions", json=body)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["choices"] == answers[1].json()["choices"]
    assert app.state.model.generations - generations == 3  # one flight of three choices, not two


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def tools_client(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    settings = Settings(  # a tools prompt in the tiny model's byte tokens needs more than its own 512
        model_path=str(tiny_model),
        n_ctx=4096,
        n_gpu_layers=0,
        n_threads=1,
        flash_attn=False,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        log_level="WARNING",
    )
    with LiveServer(create_app(settings)) as live:
        yield client_for(live)


def test_each_choice_is_read_for_tool_calls_on_its_own(tools_client: openai.OpenAI) -> None:
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [TOOL],
        "tool_choice": "required",
        "max_tokens": 300,
        "temperature": 1.0,
        "seed": 4,
        "n": 2,
    }
    out = tools_client.chat.completions.create(**body)
    assert [c.index for c in out.choices] == [0, 1]
    ids = []
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather" and call.id.startswith("call_")
        ids.append(call.id)
    assert len(set(ids)) == 2  # ids unique within the response
    # streamed (from the cache: the same choices), each choice's call on its own index; ids are the response's
    calls: dict[int, list[Any]] = {}
    finish: dict[int, str] = {}
    for chunk in tools_client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                if piece.id is not None:
                    calls.setdefault(choice.index, []).append([piece.id, piece.function.name, ""])
                else:
                    calls[choice.index][piece.index][2] += piece.function.arguments
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    assert len({call[0] for index in calls for call in calls[index]}) == 2
    whole = {
        i: [[c.function.name, c.function.arguments] for c in choice.message.tool_calls or []]
        for i, choice in enumerate(out.choices)
    }
    assert {i: [call[1:] for call in got] for i, got in calls.items()} == whole
    assert whole[0] != whole[1]  # two samples, each read on its own
