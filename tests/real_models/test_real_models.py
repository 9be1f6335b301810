"""The models users run, quantized, on the llama.cpp this machine built: the embedded default (SmolLM2-135M-Instruct
Q4_1) and the benchmarks' Gemma 3 270M Q4_K_M. Each runs in a process of its own, so that a crash inside a
quantized kernel (AMX on Sapphire Rapids class CPUs, say) fails these tests instead of ending the suite."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from handler.cli.assemble_model import MODELS, MODELS_DIR, assemble
from tests.conftest import lambda_body, lambda_event
from tests.helpers.server import ROOT, crash_message, service_process

QUESTIONS = [
    "What is the capital of France?",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What is two plus three?",
]


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """Each embedded model, assembled if `make test` has not done it yet (both come from PyPI)."""
    name: str = request.param
    return name, assemble(MODELS[name], MODELS_DIR / MODELS[name].file_name)


def model_env(model: tuple[str, Path], cache_dir: Path) -> dict[str, str]:
    name, path = model
    return {
        "CHAT_MODEL_PATH": str(path),
        "CHAT_MODEL_SHA256": MODELS[name].sha256,
        "CHAT_CACHE_DIR": str(cache_dir),
        "CHAT_MODEL_NAME": "m",
        "CHAT_N_PARALLEL": "8",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_METRICS": "off",
    }


@pytest.fixture(scope="module")
def server(model: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with service_process(model_env(model, tmp_path_factory.mktemp("cache"))) as (url, process):
        yield model[0], url
        assert process.poll() is None, crash_message(process.returncode)


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_chat_through_the_lambda_entry_point_in_a_fresh_process(model: tuple[str, Path], tmp_path: Path) -> None:
    event = lambda_event("apigw-http-v2", {"prompt": QUESTIONS[0], "max_tokens": 48})
    code = (
        "import json, sys\n"
        "from handler.lambda_handler import handler\n"
        "from tests.helpers.lambda_events import FakeLambdaContext\n"
        "print(json.dumps(handler(json.load(sys.stdin), FakeLambdaContext())))\n"
    )
    env = {**os.environ, **model_env(model, tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(event), capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, f"{crash_message(done.returncode)}: {done.stderr[-2000:]}"
    response = json.loads(done.stdout.splitlines()[-1])
    assert response["statusCode"] == 200, response
    text = lambda_body(response)["text"]
    assert text.strip()
    if model[0] == "smollm2":  # an instruction-tuned model through its own chat template: one answer
        assert "Paris" in text
        assert not re.search(r"^\s*\w+:", text, re.MULTILINE), f"the answer invents further turns: {text!r}"


def test_a_streamed_chat_completion_through_uvicorn(server: tuple[str, str]) -> None:
    _, url = server
    client = client_for(url)
    messages = [{"role": "user", "content": QUESTIONS[2]}]
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=32, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=32)
    assert len([p for p in pieces if p]) > 1, "the answer came in one piece, not streamed"
    assert "".join(pieces) == whole.choices[0].message.content
    assert "".join(pieces).strip()
    assert finish in {"stop", "length"}


def test_eight_distinct_concurrent_requests_at_n_parallel_8(server: tuple[str, str]) -> None:
    """Each gets an answer to its own question: it begins as that question's answer alone does, and is
    closer to it than to any other question's (another batch shape may part them after a near-tie, even
    a few tokens in, on these small quantized models)."""
    _, url = server
    client = client_for(url)

    def ask(question: str) -> str:
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": question}], max_tokens=24, extra_body={"cache": "off"}
        )
        return answer.choices[0].message.content or ""

    alone = [ask(q) for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(ask, QUESTIONS))
    assert len(set(alone)) > len(QUESTIONS) // 2, alone  # distinct questions, mostly distinct answers
    for i, (question, single, batched) in enumerate(zip(QUESTIONS, alone, together, strict=True)):
        assert batched.split()[:1] == single.split()[:1], (question, single, batched)
        own = common_prefix(batched, single)
        assert all(own >= common_prefix(batched, other) for j, other in enumerate(alone) if j != i), (question, batched)


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_structured_output(server: tuple[str, str]) -> None:
    _, url = server
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    answer = client_for(url).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Give the largest city of France and its population as JSON."}],
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert answer.choices[0].finish_reason == "stop"
    value = json.loads(answer.choices[0].message.content or "")
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and isinstance(value["population"], int)


def test_embeddings(server: tuple[str, str]) -> None:
    _, url = server
    client = client_for(url)
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by four percent.", "The cat sat on the mat."]
    vectors = [item.embedding for item in client.embeddings.create(model="m", input=texts).data]
    assert len(vectors) == 3 and len(vectors[0]) >= 64
    assert all(math.isfinite(x) for vector in vectors for x in vector)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]


REFERENCE = r"""
import json, os, sys
from llama_cpp import Llama
path, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=os.cpu_count(), flash_attn=True, verbose=False)
out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
print(json.dumps(out["choices"][0]["text"]))
"""
PROBE = "Once upon a time, in a quiet village by the sea, there lived an old fisherman who"
OTHERS = [
    "Once upon a time, in a quiet village by the sea, a young girl found a bottle",
    "Once upon a time, in a quiet village by the sea, there lived a cat",
    "Once upon a time, in a quiet village by the sea,",
]


def test_with_prefix_reuse_off_a_greedy_answer_does_not_depend_on_what_was_served_before(
    model: tuple[str, Path], tmp_path: Path
) -> None:
    """The exact setting (no prefix reuse, no drafts): the same request alone gets the same text whatever came
    before it (here requests
    that share its opening, which prefix reuse would have decoded only in part), and it is
    llama-cpp-python's create_completion text."""
    env = {**model_env(model, tmp_path / "cache"), "CHAT_REUSE_PROMPT_PREFIX": "false", "CHAT_CACHE_DIR": ""}
    env.update({"CHAT_CACHE_MEMORY_ENTRIES": "0", "CHAT_SPECULATIVE_DRAFT_MAX": "0"})
    with service_process(env) as (url, _):
        client = client_for(url)
        answers = []
        for other in [*OTHERS, None]:
            answers.append(client.completions.create(model="m", prompt=PROBE, max_tokens=32).choices[0].text)
            if other is not None:
                client.completions.create(model="m", prompt=other, max_tokens=16)
    reference = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(model[1]), PROBE, "32"], capture_output=True, text=True, check=True
    )
    assert len(set(answers)) == 1, answers
    assert answers[0] == json.loads(reference.stdout.splitlines()[-1])
