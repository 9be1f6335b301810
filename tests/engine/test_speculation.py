"""Prompt-lookup speculative decoding: the drafts themselves (pure Python), and the scheduler's answers
with speculation against the same scheduler's without it, on the tiny model and on Gemma."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handler.core.types import FinishReason, SamplingParams
from handler.engine.scheduler import EngineSettings, Scheduler
from handler.engine.speculation import PAUSE_AFTER_MISSES, Drafter, NgramIndex
from tests.tiny_gguf import CONTEXT

MODELS = Path(__file__).resolve().parents[2] / "models"
GEMMA, SMOLLM2 = MODELS / "gemma-3-270m-q4_k_m.gguf", MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
PARAGRAPH = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, they agreed "
    "to fund the children's reading room, the computer lab, and a small garden behind the building."
)
# SmolLM2's chat template around a request its answer quotes: what drafts are for
QUOTED = f"<|im_start|>user\nRepeat this paragraph exactly:\n{PARAGRAPH}<|im_end|>\n<|im_start|>assistant\n"
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists(), reason="make test assembles SmolLM2 into models/")


def test_a_draft_is_what_followed_the_last_ngram_where_it_occurred_before() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 6, 9, 1, 2], n=2)
    assert index.draft(3) == [3, 4, 5]
    assert index.draft(10) == [3, 4, 5, 6, 9, 1, 2]  # up to the end of the context
    index.append(7)  # (2, 7) never occurred before
    assert index.draft(3) == []
    assert NgramIndex([1, 2, 1, 2], n=2).draft(4) == [1, 2]  # the latest earlier occurrence
    assert NgramIndex([5, 6], n=2).draft(4) == []


def test_a_drafter_pauses_where_drafts_keep_failing_and_comes_back() -> None:
    drafter = Drafter([1, 2, 3, 1, 2], n=2, draft_max=2)
    assert drafter.draft(8) == [3, 1]  # at most draft_max
    for _ in range(PAUSE_AFTER_MISSES):
        drafter.verified(2, 0)
    paused = 0
    while not drafter.draft(8):
        paused += 1
        assert paused < 100
    assert paused >= 2
    drafter.verified(2, 1)
    assert drafter.draft(8) == [3, 1]


def params(max_tokens: int = 48, **kw: Any) -> SamplingParams:
    base: dict[str, Any] = {"temperature": 0.0, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}
    return SamplingParams(**{"max_tokens": max_tokens, "stop": (), "seed": 0, **base, **kw})


@pytest.fixture
def engines(tiny_model: Path) -> Iterator[Any]:
    made: list[Scheduler] = []

    def make(draft_max: int, model: Path = tiny_model, n_parallel: int = 1, n_ctx: int = CONTEXT) -> Scheduler:
        settings = EngineSettings(
            model_path=str(model),
            n_ctx=n_ctx,
            n_batch=512,
            n_parallel=n_parallel,
            n_threads=1,
            n_gpu_layers=0,
            use_mmap=True,
            cache_prompt=False,  # each answer from scratch: only the drafts differ between the two engines
            draft_max=draft_max,
            draft_ngram=2,
            draft_max_sequences=n_parallel,  # drafts however many decode: what the tests compare
        )
        made.append(Scheduler.load(settings))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()


def answer(engine: Scheduler, prompt: str, p: SamplingParams, stream: list[str] | None = None) -> tuple[str, Any]:
    tokens = engine.tokenize(prompt, add_bos=True, special=True)
    generated = engine.submit(tokens, p, on_text=stream.append if stream is not None else None).result()
    return generated.text, generated.finish_reason


PROMPTS = ["The quick brown fox " * 5, "a b c a b c a b c", "Hello", "1 2 3 4 5"]


def test_greedy_answers_with_drafts_are_the_answers_without(engines: Any) -> None:
    """On the tiny model, whose greedy answers fall into loops that drafts then follow."""
    plain, drafting = engines(0), engines(8)
    for prompt in PROMPTS:
        streamed: list[str] = []
        with_drafts = answer(drafting, prompt, params(), streamed)
        assert with_drafts == answer(plain, prompt, params())
        assert "".join(streamed) == with_drafts[0]
    stats = drafting.stats()
    assert stats.draft_tokens_accepted > 0  # drafts were made and taken: the comparison tested them
    assert plain.stats().draft_tokens == 0


@needs_smollm2
def test_max_tokens_and_stops_that_land_inside_an_accepted_draft(engines: Any) -> None:
    plain, drafting = engines(0, model=SMOLLM2, n_ctx=1024), engines(8, model=SMOLLM2, n_ctx=1024)
    full, _ = answer(plain, QUOTED, params(48))
    assert drafting.stats().draft_tokens == 0
    for max_tokens in (1, 3, 9, 17, 30):
        assert answer(drafting, QUOTED, params(max_tokens)) == answer(plain, QUOTED, params(max_tokens))
    stopped = 0
    for stop in sorted({full[i : i + 3] for i in range(4, len(full) - 3, 29)} - {""}):
        cut = answer(drafting, QUOTED, params(48, stop=(stop,)))
        assert cut == answer(plain, QUOTED, params(48, stop=(stop,)))
        stopped += cut[1] is FinishReason.STOP
    assert stopped >= 3  # stops inside the answer, not only past its end
    assert drafting.stats().draft_tokens_accepted > 0


@needs_smollm2
def test_sampled_answers_with_drafts_are_drawn_by_the_sampler_and_repeat_by_seed(engines: Any) -> None:
    """Under sampling each token is still the sampler's own draw (a draft only saves its decode), so a seed
    gives one answer; not the same text as without drafts, as logits computed several tokens to a decode
    differ in their last digits from one-token decodes (as they do under batching)."""
    drafting = engines(8, model=SMOLLM2, n_ctx=1024)
    answers = {}
    for seed in range(3):
        p = params(40, temperature=0.8, seed=seed, repeat_penalty=1.1)
        answers[seed] = answer(drafting, QUOTED, p)
        assert answer(drafting, QUOTED, p) == answers[seed]
    assert len({text for text, _ in answers.values()}) > 1  # it did sample
    assert drafting.stats().draft_tokens_accepted > 0


@needs_smollm2
def test_concurrent_answers_with_drafts_never_overflow_the_kv_pool(engines: Any) -> None:
    """Drafts take cells only within each request's reservation: a pool that holds exactly the running
    requests' worst cases never fails a decode."""
    prompt_tokens = len(engines(0, model=SMOLLM2, n_ctx=1024).tokenize(QUOTED, add_bos=True, special=True))
    drafting = engines(8, model=SMOLLM2, n_parallel=4, n_ctx=4 * (prompt_tokens + 40))
    tokens = drafting.tokenize(QUOTED, add_bos=True, special=True)
    futures = [drafting.submit(tokens, params(40, temperature=0.7, seed=seed)) for seed in range(8)]
    answers = [future.result() for future in futures]
    stats = drafting.stats()
    assert stats.decode_failures == 0 and stats.draft_tokens_accepted > 0
    assert all(a.completion_tokens == 40 or a.finish_reason is FinishReason.STOP for a in answers)
    assert stats.reserved_cells == 0


@pytest.mark.skipif(not GEMMA.exists(), reason="make test assembles Gemma 3 270M into models/")
def test_gemma_greedy_answers_with_drafts_are_the_answers_without(engines: Any) -> None:
    plain, drafting = engines(0, model=GEMMA, n_ctx=1024), engines(8, model=GEMMA, n_ctx=1024)
    text = "The committee agreed to fund the reading room, the computer lab and a small garden."
    prompt = f"Text: {text}\nThe same text, repeated word for word:\nText:"
    quoted = answer(drafting, prompt, params(40))
    assert quoted == answer(plain, prompt, params(40))
    assert drafting.stats().draft_tokens_accepted > 10  # it quoted, and drafts carried the quote
    for other in ("Write a list of ten fruits:\n1.", "def fibonacci(n):"):
        assert answer(drafting, other, params(40)) == answer(plain, other, params(40))
