"""The continuous-batching scheduler on real llama.cpp, with the tiny random model.

The model's answers are gibberish bytes: answers are compared with each other (alone vs. batched,
ours vs. llama-cpp-python's create_completion), never with fixed text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from handler.core.types import FinishReason, SamplingParams
from handler.engine.scheduler import EngineClosed, EngineLoadError, EngineSettings, Generated, Scheduler
from tests.conftest import same_generation
from tests.tiny_gguf import CONTEXT

PROMPTS = [
    "What is the capital of France?",
    "Hello",
    "Tell me a story about a dragon and a knight.",
    "1 2 3 4 5",
    "Ünïcødé ✓ 日本語",
    "The quick brown fox",
    "Summarize: llama.cpp batches sequences.",
    "x",
]


def params(max_tokens: int = 24, **kw: Any) -> SamplingParams:
    base: dict[str, Any] = {
        "max_tokens": max_tokens,
        "stop": (),
        "temperature": 0.0,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
        "seed": 0,
    }
    return SamplingParams(**{**base, **kw})


Factory = Callable[..., Scheduler]


@pytest.fixture
def engine(tiny_model: Path) -> Iterator[Factory]:
    """Schedulers on the tiny model, closed after the test."""
    made: list[Scheduler] = []

    def make(n_parallel: int = 1, n_ctx: int = CONTEXT, n_batch: int = 512, cache_prompt: bool = True) -> Scheduler:
        scheduler = Scheduler.load(
            EngineSettings(
                model_path=str(tiny_model),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_parallel=n_parallel,
                n_threads=1,
                n_gpu_layers=0,
                use_mmap=True,
                cache_prompt=cache_prompt,
            )
        )
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(tiny_model), n_ctx=CONTEXT, n_threads=1, seed=0, verbose=False)


def tokens(scheduler: Scheduler, prompt: str) -> list[int]:
    return scheduler.tokenize(prompt, add_bos=True, special=True)


def alone(tiny_model: Path, prompts: list[list[int]], p: SamplingParams) -> list[Generated]:
    """Each prompt on a fresh single-slot scheduler without prompt cache: the unbatched answer."""
    settings = EngineSettings(str(tiny_model), CONTEXT, 512, 1, 1, 0, True, cache_prompt=False)
    with Scheduler.load(settings) as scheduler:
        return [scheduler.submit(t, p).result(timeout=30) for t in prompts]


def test_single_slot_greedy_equals_create_completion(engine: Factory, reference: Any) -> None:
    scheduler = engine(n_parallel=1)
    for prompt in PROMPTS:
        for max_tokens in (1, 7, 40):
            prompt_tokens = tokens(scheduler, prompt)
            out = reference.create_completion(prompt_tokens, max_tokens=max_tokens, temperature=0)
            ours = scheduler.submit(prompt_tokens, params(max_tokens)).result(timeout=30)
            raw_tokens = out["usage"]["completion_tokens"]
            assert same_generation(ours.text, out["choices"][0]["text"], raw_tokens, max_tokens), (prompt, max_tokens)
            assert ours.prompt_tokens == out["usage"]["prompt_tokens"] == len(prompt_tokens)
            if raw_tokens <= max_tokens:
                assert ours.completion_tokens == raw_tokens
                assert ours.finish_reason == out["choices"][0]["finish_reason"]
            else:  # llama-cpp-python ran past max_tokens inside a UTF-8 character; we hold the cap
                assert (ours.completion_tokens, ours.finish_reason) == (max_tokens, FinishReason.LENGTH)


@pytest.mark.parametrize(
    "sampling",
    [
        {"repeat_penalty": 1.3, "frequency_penalty": 0.4, "presence_penalty": 0.3},
        {"temperature": 0.9, "seed": 42},
        {"temperature": 1.5, "seed": 7, "top_k": 0, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1},
    ],
)
def test_sampler_chain_equals_create_completion(engine: Factory, reference: Any, sampling: dict[str, Any]) -> None:
    """Penalties (accepted tokens) and seeded sampling follow llama-cpp-python's own chain."""
    scheduler = engine(n_parallel=2)
    for prompt in PROMPTS[:4]:
        prompt_tokens = tokens(scheduler, prompt)
        p = params(30, **sampling)
        # SamplingParams' fields are create_completion's keyword names
        out = reference.create_completion(prompt_tokens, **{**asdict(p), "stop": list(p.stop)})
        ours = scheduler.submit(prompt_tokens, p).result(timeout=30)
        assert same_generation(ours.text, out["choices"][0]["text"], out["usage"]["completion_tokens"], 30), prompt


def test_seeded_sampling_is_reproducible_mid_batch(engine: Factory) -> None:
    scheduler = engine(n_parallel=4)
    p = params(40, temperature=0.8, seed=1234)
    prompt_tokens = tokens(scheduler, PROMPTS[2])
    futures = [scheduler.submit(prompt_tokens, p) for _ in range(4)]
    texts = {f.result(timeout=30).text for f in futures}
    assert len(texts) == 1
    other = scheduler.submit(prompt_tokens, params(40, temperature=0.8, seed=99)).result(timeout=30)
    assert other.text not in texts  # a different seed: a different answer (the tiny model's are random bytes)


def test_concurrent_requests_get_their_answers_alone(engine: Factory, tiny_model: Path) -> None:
    """8 distinct requests on 4 slots, submitted together: each answer is the one it gets alone,
    though it decoded in batches of others' tokens (and half of them waited for a slot)."""
    scheduler = engine(n_parallel=4)
    prompts = [tokens(scheduler, p) for p in PROMPTS]
    p = params(48)
    futures = [scheduler.submit(t, p) for t in prompts]
    batched = [f.result(timeout=30) for f in futures]
    assert batched == alone(tiny_model, prompts, p) or _tie_report(batched, alone(tiny_model, prompts, p))
    stats = scheduler.stats()
    assert stats.steps < sum(r.completion_tokens for r in batched)  # they did share steps
    assert (stats.active, stats.waiting, stats.reserved_cells) == (0, 0, 0)


def _tie_report(batched: list[Generated], single: list[Generated]) -> bool:
    for b, s in zip(batched, single, strict=True):
        assert (b.text, b.completion_tokens) == (s.text, s.completion_tokens)
    return True


def test_small_batch_splits_prompts_across_steps(engine: Factory, tiny_model: Path) -> None:
    """n_batch 8: prompts go in chunks next to the decoding sequences' tokens; same answers."""
    scheduler = engine(n_parallel=3, n_batch=8)
    prompts = [tokens(scheduler, p) for p in PROMPTS[:5]]
    futures = [scheduler.submit(t, params(20)) for t in prompts]
    assert [f.result(timeout=30) for f in futures] == alone(tiny_model, prompts, params(20))


def greedy_bytes(reference: Any, prompt_tokens: list[int], n: int) -> bytes:
    """The bytes of llama-cpp-python's first n greedy tokens (up to an end-of-generation token)."""
    import llama_cpp

    out: list[int] = []
    for token in reference.generate(prompt_tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(reference._model.vocab, token) or len(out) == n:
            break
        out.append(token)
    return bytes(reference.detokenize(out))


def test_stop_strings_cut_and_stream(engine: Factory, reference: Any) -> None:
    """A stop string of several characters, cut from the answer and never streamed, mid-batch."""
    scheduler = engine(n_parallel=3)
    found = []
    for prompt in PROMPTS:  # a run of printable ASCII in an answer's bytes (the tiny model writes random bytes)
        data = greedy_bytes(reference, tokens(scheduler, prompt), 60)
        found += [(prompt, data, data[i : i + 3]) for i in range(4, len(data) - 3) if data[i : i + 3].isalnum()]
    prompt, data, stop_bytes = found[0]
    stop = stop_bytes.decode()
    prompt_tokens = tokens(scheduler, prompt)
    pieces: list[str] = []
    others = [scheduler.submit(tokens(scheduler, p), params(60)) for p in PROMPTS[1:3]]  # mid-batch
    ours = scheduler.submit(prompt_tokens, params(60, stop=("never-there", stop)), on_text=pieces.append).result(
        timeout=30
    )
    for f in others:
        f.result(timeout=30)
    assert ours.text == data[: data.index(stop_bytes)].decode("utf-8", errors="ignore")
    assert ours.finish_reason == FinishReason.STOP
    assert "".join(pieces) == ours.text  # the stop's first characters were held back, then dropped
    out = reference.create_completion(prompt_tokens, max_tokens=60, temperature=0, stop=[stop])
    assert ours.text == out["choices"][0]["text"]


def test_streamed_pieces_add_up(engine: Factory) -> None:
    """With stop strings that start in the answers but never complete: held back, then sent at the end."""
    scheduler = engine(n_parallel=4)
    prompts = [tokens(scheduler, p) for p in PROMPTS]
    full = [f.result(timeout=30).text for f in [scheduler.submit(t, params(50)) for t in prompts]]
    streams: list[list[str]] = [[] for _ in prompts]
    stops = [(text[5:7] + "\x00never",) if len(text) > 7 else () for text in full]
    futures = [
        scheduler.submit(t, params(50, stop=s), on_text=streams[i].append)
        for i, (t, s) in enumerate(zip(prompts, stops, strict=True))
    ]
    for i, f in enumerate(futures):
        result = f.result(timeout=30)
        assert result.text == full[i]
        assert "".join(streams[i]) == result.text
        assert all(streams[i])  # no empty pieces


def test_max_tokens_is_a_hard_cap(engine: Factory) -> None:
    scheduler = engine(n_parallel=4)
    futures = [scheduler.submit(tokens(scheduler, p), params(n)) for p in PROMPTS for n in (1, 2, 3, 5)]
    for f, n in zip(futures, [n for _ in PROMPTS for n in (1, 2, 3, 5)], strict=True):
        result = f.result(timeout=30)
        assert result.completion_tokens <= n
        if result.finish_reason == FinishReason.LENGTH:
            assert result.completion_tokens == n


def test_cancel_mid_batch_frees_its_cells(engine: Factory, tiny_model: Path) -> None:
    scheduler = engine(n_parallel=2)
    long_tokens = tokens(scheduler, PROMPTS[2])
    other_tokens = tokens(scheduler, PROMPTS[0])
    cancel = threading.Event()
    other: list[Future[Generated]] = []
    seen_mid_batch: list[int] = []

    def on_long_text(piece: str) -> None:
        if not other:  # the long one runs: start the other next to it
            other.append(scheduler.submit(other_tokens, params(30), on_text=on_other_text))

    def on_other_text(piece: str) -> None:
        seen_mid_batch.append(scheduler.stats().active)
        cancel.set()  # from the other's stream: the long one is cancelled mid-batch

    cancelled = scheduler.submit(long_tokens, params(300), cancelled=cancel, on_text=on_long_text).result(timeout=30)
    assert cancelled.finish_reason == FinishReason.CANCELLED
    assert 0 < cancelled.completion_tokens < 300
    assert 2 in seen_mid_batch
    finished = other[0].result(timeout=30)
    assert alone(tiny_model, [long_tokens], params(300))[0].text.startswith(cancelled.text)
    assert finished == alone(tiny_model, [other_tokens], params(30))[0]
    # its cells are gone: a request needing the whole context beside the other's cache is answered
    big_tokens = tokens(scheduler, "x")
    big = scheduler.submit(big_tokens, params(CONTEXT - len(big_tokens))).result(timeout=60)
    assert big == alone(tiny_model, [big_tokens], params(CONTEXT - len(big_tokens)))[0]


def test_cancelled_before_start_and_future_cancel(engine: Factory) -> None:
    scheduler = engine(n_parallel=1)
    gone = threading.Event()
    gone.set()
    result = scheduler.submit(tokens(scheduler, "Hello"), params(10), cancelled=gone).result(timeout=30)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("", FinishReason.CANCELLED, 0)


def test_deadline_mid_batch(engine: Factory, tiny_model: Path) -> None:
    scheduler = engine(n_parallel=2)
    slow_tokens = tokens(scheduler, PROMPTS[3])
    other_tokens = tokens(scheduler, PROMPTS[1])
    other: list[Future[Generated]] = []

    def on_text(piece: str) -> None:
        if not other:
            other.append(scheduler.submit(other_tokens, params(20)))
        time.sleep(0.005)  # slows the scheduler thread, so that the deadline falls mid-answer

    limited = scheduler.submit(slow_tokens, params(400), deadline=time.monotonic() + 0.15, on_text=on_text).result(
        timeout=30
    )
    assert limited.finish_reason == FinishReason.TIME_LIMIT
    assert 0 < limited.completion_tokens < 400
    assert alone(tiny_model, [slow_tokens], params(400))[0].text.startswith(limited.text)
    assert other[0].result(timeout=30) == alone(tiny_model, [other_tokens], params(20))[0]
    # a deadline passed while waiting: answered at once, empty
    late = scheduler.submit(other_tokens, params(10), deadline=time.monotonic() - 1).result(timeout=30)
    assert (late.text, late.finish_reason) == ("", FinishReason.TIME_LIMIT)


def test_request_waits_while_the_pool_is_full(engine: Factory, tiny_model: Path) -> None:
    """Two slots, but the first request reserves most of the pool: the second waits, then is answered."""
    scheduler = engine(n_parallel=2)
    first_tokens = tokens(scheduler, PROMPTS[0])
    second_tokens = tokens(scheduler, PROMPTS[2])
    seen: list[tuple[int, int]] = []
    second: list[Future[Generated]] = []

    def on_text(piece: str) -> None:
        if not second:
            second.append(scheduler.submit(second_tokens, params(CONTEXT // 2)))
        elif len(seen) < 3:
            stats = scheduler.stats()
            seen.append((stats.active, stats.waiting))

    first = scheduler.submit(first_tokens, params(CONTEXT // 2), on_text=on_text).result(timeout=30)
    assert (1, 1) in seen  # the second waited beside a free slot: its worst case did not fit
    answers = alone(tiny_model, [first_tokens, second_tokens], params(CONTEXT // 2))
    assert first == answers[0]
    assert second[0].result(timeout=30) == answers[1]


def test_prefix_reuse_gives_identical_answers(engine: Factory, tiny_model: Path) -> None:
    scheduler = engine(n_parallel=2)
    system = "System: you are a helpful assistant who answers briefly.\n\nHuman: "
    first = tokens(scheduler, system + "Hi there")
    second = tokens(scheduler, system + "What is 2 + 2?")
    p = params(30)
    a = scheduler.submit(first, p).result(timeout=30)
    reused_before = scheduler.stats().prompt_tokens_reused
    b = scheduler.submit(second, p).result(timeout=30)
    again = scheduler.submit(first, p).result(timeout=30)  # the whole prompt cached: only its last token runs
    assert scheduler.stats().prompt_tokens_reused > reused_before + len(first) // 2
    assert [a, b, again] == alone(tiny_model, [first, second, first], p)
    assert a == again


def test_shared_prefix_copied_between_concurrent_requests(engine: Factory, tiny_model: Path) -> None:
    scheduler = engine(n_parallel=3)
    system = "System: a long shared system prompt that every request starts with, word for word.\n\n"
    prompts = [tokens(scheduler, system + q) for q in ("Human: a", "Human: bb", "Human: ccc")]
    p = params(25)
    first = scheduler.submit(prompts[0], p)
    first.result(timeout=30)
    futures = [scheduler.submit(t, p) for t in prompts[1:]]
    results = [first.result()] + [f.result(timeout=30) for f in futures]
    assert scheduler.stats().prompt_tokens_reused >= 2 * (len(tokens(scheduler, system)) - 2)
    assert results == alone(tiny_model, prompts, p)


def test_idle_caches_are_evicted_for_a_big_request(engine: Factory, tiny_model: Path) -> None:
    scheduler = engine(n_parallel=3)
    for prompt in PROMPTS[:3]:
        scheduler.submit(tokens(scheduler, prompt), params(60)).result(timeout=30)
    assert scheduler.stats().cached_cells > 0
    big_tokens = tokens(scheduler, PROMPTS[4])
    big = scheduler.submit(big_tokens, params(CONTEXT - len(big_tokens))).result(timeout=60)
    assert big == alone(tiny_model, [big_tokens], params(CONTEXT - len(big_tokens)))[0]
    assert scheduler.stats().decode_failures == 0


def test_tokenizer_and_metadata(engine: Factory, reference: Any) -> None:
    scheduler = engine()
    text = "Hello Ünïcødé"
    assert scheduler.tokenize(text, add_bos=True, special=True) == reference.tokenize(text.encode(), True, True)
    assert scheduler.tokenize(text, add_bos=False, special=False) == reference.tokenize(text.encode(), False, False)
    ids = scheduler.tokenize(text, add_bos=True, special=True)
    assert scheduler.detokenize(ids) == reference.detokenize(ids)
    assert (scheduler.bos, scheduler.eos) == (reference.token_bos(), reference.token_eos())
    assert scheduler.token_text(scheduler.bos) == "<s>"
    assert scheduler.metadata["general.architecture"] == "llama"
    assert scheduler.n_ctx == CONTEXT


def test_close_fails_waiting_work_and_refuses_more(engine: Factory) -> None:
    scheduler = engine(n_parallel=1)
    release = threading.Event()
    queued: list[Future[Generated]] = []

    def on_text(piece: str) -> None:
        if not queued:
            queued.append(scheduler.submit(tokens(scheduler, "Hello"), params(10)))
            threading.Thread(target=scheduler.close).start()  # close while this one runs, the other waits
            release.wait(0.2)

    running = scheduler.submit(tokens(scheduler, PROMPTS[0]), params(400), on_text=on_text)
    with pytest.raises(EngineClosed):
        running.result(timeout=30)
    with pytest.raises(EngineClosed):
        queued[0].result(timeout=30)
    scheduler.close()  # again: returns once the thread has freed everything
    with pytest.raises(EngineClosed):
        scheduler.submit([1, 2, 3], params(10))
    with pytest.raises(EngineClosed):  # the model is gone: its vocabulary too
        tokens(scheduler, "Hello")


def test_load_failure_leaves_no_thread(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    before = {t.name for t in threading.enumerate()}
    for path in (tmp_path / "missing.gguf", bad):
        with pytest.raises(EngineLoadError):
            Scheduler.load(EngineSettings(str(path), 256, 64, 2, 1, 0, True))
    assert {t.name for t in threading.enumerate()} <= before


# ---- grammars, logit bias and log-probabilities ----------------------------------------------------

A = 0x61 + 4  # the tiny vocabulary's token for b"a" (4 control tokens, then the 256 bytes)


def test_grammar_and_logit_bias_follow_create_completion(engine: Factory, reference: Any) -> None:
    """The grammar after the penalties and the logit bias first, as llama-cpp-python's chain has them."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    scheduler = engine(n_parallel=2)
    bias = {A: 3.0, 50: -100.0}
    for prompt in PROMPTS[:3]:
        prompt_tokens = tokens(scheduler, prompt)
        out = reference.create_completion(
            prompt_tokens, max_tokens=30, temperature=0, grammar=LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        )
        ours = scheduler.submit(prompt_tokens, params(30, grammar=JSON_GBNF)).result(timeout=30)
        assert same_generation(ours.text, out["choices"][0]["text"], out["usage"]["completion_tokens"], 30), prompt
        assert ours.text.startswith("{")
        out = reference.create_completion(prompt_tokens, max_tokens=30, temperature=0, logit_bias=bias)
        ours = scheduler.submit(prompt_tokens, params(30, logit_bias=tuple(sorted(bias.items())))).result(timeout=30)
        assert same_generation(ours.text, out["choices"][0]["text"], out["usage"]["completion_tokens"], 30), prompt


def test_a_schema_grammar_holds_each_answer_mid_batch(engine: Factory, tiny_model: Path) -> None:
    import json

    from handler.engine.grammar import json_grammar

    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["kind", "legs", "ok"],
        "additionalProperties": False,
    }
    structured = params(120, grammar=json_grammar(schema))
    scheduler = engine(n_parallel=4)
    prompts = [tokens(scheduler, p) for p in PROMPTS[:4]]
    futures = [scheduler.submit(t, structured if i % 2 == 0 else params(40)) for i, t in enumerate(prompts)]
    results = [f.result(timeout=30) for f in futures]
    for i in (0, 2):
        assert results[i].finish_reason == FinishReason.STOP
        answer = json.loads(results[i].text)
        assert set(answer) == {"kind", "legs", "ok"} and answer["kind"] in ("cat", "dog")
        assert isinstance(answer["legs"], int) and isinstance(answer["ok"], bool)
    assert results[0] == alone(tiny_model, [prompts[0]], structured)[0]
    assert results[1] == alone(tiny_model, [prompts[1]], params(40))[0]  # its neighbour's grammar is not its own


def test_logit_bias_forces_and_bans_tokens(engine: Factory) -> None:
    scheduler = engine(n_parallel=2)
    prompt_tokens = tokens(scheduler, PROMPTS[0])
    forced = scheduler.submit(prompt_tokens, params(12, logit_bias=((A, 100.0),))).result(timeout=30)
    assert forced.text == "a" * 12
    plain = scheduler.submit(prompt_tokens, params(1, logprobs=0)).result(timeout=30)
    first = plain.logprobs[0].token if plain.logprobs else b""
    assert len(first) == 1  # a byte token: its id is its byte + 4
    banned = scheduler.submit(prompt_tokens, params(1, logit_bias=((first[0] + 4, -100.0),), logprobs=0)).result(
        timeout=30
    )
    assert banned.logprobs is not None and banned.logprobs[0].token != first


def test_logprobs_are_llama_cpp_pythons(engine: Factory, tiny_model: Path) -> None:
    """The same log-softmax of the same logits; the greedy token is the most likely one."""
    from llama_cpp import Llama

    reference = Llama(model_path=str(tiny_model), n_ctx=CONTEXT, n_threads=1, seed=0, verbose=False, logits_all=True)
    scheduler = engine(n_parallel=2)
    for prompt in PROMPTS[:3]:
        prompt_tokens = tokens(scheduler, prompt)
        out = reference.create_completion(prompt_tokens, max_tokens=10, temperature=0, logprobs=3)
        ours = scheduler.submit(prompt_tokens, params(10, logprobs=5)).result(timeout=30)
        assert ours.logprobs is not None and len(ours.logprobs) == ours.completion_tokens
        expected = out["choices"][0]["logprobs"]["token_logprobs"][: ours.completion_tokens]
        assert [e.logprob for e in ours.logprobs] == pytest.approx([float(x) for x in expected], abs=1e-5)
        assert b"".join(e.token for e in ours.logprobs).decode("utf-8", errors="ignore") == ours.text
        for entry in ours.logprobs:
            assert len(entry.top) == 5
            assert entry.top[0] == (entry.token, entry.logprob)  # greedy: the most likely token
            assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)


def test_logprobs_change_nothing_and_end_where_a_stop_string_cuts(engine: Factory) -> None:
    scheduler = engine(n_parallel=3)
    found = []
    for prompt in PROMPTS:
        prompt_tokens = tokens(scheduler, prompt)
        plain, counted = (scheduler.submit(prompt_tokens, params(40, logprobs=n)) for n in (None, 2))
        plain_result, full = plain.result(timeout=30), counted.result(timeout=30)
        assert plain_result.logprobs is None and full.logprobs is not None
        assert (plain_result.text, plain_result.completion_tokens) == (full.text, full.completion_tokens)
        data = b"".join(e.token for e in full.logprobs)  # the answer's bytes, before UTF-8 decoding
        found += [(prompt_tokens, full, data[i : i + 2]) for i in range(3, len(data) - 2) if data[i : i + 2].isalnum()]
    prompt_tokens, full, stop = found[0]
    assert full.logprobs is not None
    cut = scheduler.submit(prompt_tokens, params(40, stop=(stop.decode(),), logprobs=2)).result(timeout=30)
    assert cut.finish_reason == FinishReason.STOP and cut.text == full.text[: full.text.index(stop.decode())]
    assert cut.logprobs is not None and b"".join(e.token for e in cut.logprobs).decode("utf-8", "ignore") == cut.text
    # the same tokens; their values as close as batching leaves them (other batches, other float sums)
    assert [e.token for e in cut.logprobs[:-1]] == [e.token for e in full.logprobs[: len(cut.logprobs) - 1]]
    assert [e.logprob for e in cut.logprobs] == pytest.approx(
        [e.logprob for e in full.logprobs[: len(cut.logprobs)]], abs=1e-4
    )
    assert len(cut.logprobs) < cut.completion_tokens  # the stop string's tokens are counted, not listed


def test_what_only_the_model_can_check_is_refused_at_submit(engine: Factory) -> None:
    from handler.engine.contract import InvalidRequest

    scheduler = engine()
    prompt_tokens = tokens(scheduler, "x")
    for bad, param in [
        (params(4, logit_bias=((scheduler.n_vocab, 1.0),)), "logit_bias"),
        (params(4, grammar="root ::= ("), "response_format"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            scheduler.submit(prompt_tokens, bad)
        assert caught.value.param == param
    with pytest.raises(InvalidRequest):
        scheduler.token_piece(scheduler.n_vocab)
    assert scheduler.token_piece(1) == b"<s>" and scheduler.token_piece(A) == b"a"
    assert scheduler.submit(prompt_tokens, params(3)).result(timeout=30).completion_tokens == 3  # still serving


# ---- embeddings -------------------------------------------------------------------------------


def test_embeddings_come_between_steps_and_change_no_answer(engine: Factory, tiny_model: Path) -> None:
    """The embedding context is made on the first embedding request only; vectors computed while
    generations run are `Llama.embed`'s (mean pooling: the tiny model declares none), and the
    generations' answers are the ones they get alone."""
    import llama_cpp

    scheduler = engine(n_parallel=4)
    prompts = [tokens(scheduler, p) for p in PROMPTS[:4]]
    p = params(32)
    assert scheduler.submit(prompts[0], p).result(timeout=30).completion_tokens > 0
    assert scheduler._embeds._context is None  # generation alone never makes it
    texts = PROMPTS[4:]
    inputs = [scheduler.tokenize(t, add_bos=True, special=False) for t in texts]
    generations = [scheduler.submit(t, p) for t in prompts]
    vectors = [scheduler.embed(t) for t in inputs]
    batched = [f.result(timeout=30) for f in generations]
    assert batched == alone(tiny_model, prompts, p) or _tie_report(batched, alone(tiny_model, prompts, p))
    reference = llama_cpp.Llama(
        model_path=str(tiny_model),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_threads=1,
        verbose=False,
    )
    for text, future in zip(texts, vectors, strict=True):
        assert list(future.result(timeout=30)) == reference.embed(text), text
    assert scheduler.stats().embeddings == len(texts)
    with pytest.raises(ValueError, match="exceed the embedding context"):
        scheduler.embed([1] + [200] * scheduler.embedding_n_ctx)
    with pytest.raises(ValueError, match="no tokens"):
        scheduler.embed([])


def test_close_fails_queued_embeddings(engine: Factory) -> None:
    scheduler = engine(n_parallel=1)
    release = threading.Event()
    queued: list[Future[tuple[float, ...]]] = []

    def on_text(piece: str) -> None:
        if not queued:
            queued.append(scheduler.embed(tokens(scheduler, "Hello")))
            threading.Thread(target=scheduler.close).start()
            release.wait(0.2)

    running = scheduler.submit(tokens(scheduler, PROMPTS[0]), params(400), on_text=on_text)
    with pytest.raises(EngineClosed):
        running.result(timeout=30)
    with pytest.raises(EngineClosed):
        queued[0].result(timeout=30)
    with pytest.raises(EngineClosed):
        scheduler.embed([1, 2, 3])
