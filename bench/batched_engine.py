"""Continuous batching (handler.engine.scheduler) vs. llama-cpp-python's create_completion one at a time.

Run by hand (prints figures, asserts nothing):

    .venv/bin/python bench/batched_engine.py [--model models/gemma-3-270m-q4_k_m.gguf] [--rounds 3]

For 1, 2, 4 and 8 requests arriving together (distinct prompts, greedy, --tokens each): aggregate
generated tokens/s and per-request latency p50, through the scheduler (all in one llama_decode per
step) and through create_completion served in arrival order, interleaved in rounds because the VM is
noisy. create_completion runs in a child process: a second thread calling llama.cpp in this process
would give it a second OpenMP pool, which slows both (see handler/engine/scheduler.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.core.types import SamplingParams
from handler.engine.contract import EngineSettings, Generated
from handler.engine.scheduler import Scheduler

TOPICS = [
    "a lighthouse keeper",
    "the first snow of winter",
    "a robot learning to paint",
    "an old map",
    "a city under the sea",
    "a dragon who hates fire",
    "the last train home",
    "a garden on the moon",
    "a clockmaker's secret",
    "a lost violin",
    "two rival bakers",
    "a storm at sea",
    "a library that never closes",
    "a cat who can read",
    "the longest day",
    "a bridge of glass",
]


def prompts(round_no: int, n: int) -> list[str]:
    """Distinct prompts (about 20 tokens), never repeated across rounds."""
    return [
        f"Story {round_no * 100 + i}: write a long and detailed story about {TOPICS[(round_no * 7 + i) % len(TOPICS)]}."
        for i in range(n)
    ]


def sampling(max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, stop=(), temperature=0.0, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0, seed=0
    )


def baseline_child(conn: Connection, model: str, n_ctx: int, threads: int) -> None:
    """create_completion, one request after another, in a process of its own."""
    from llama_cpp import Llama

    llama = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        texts, max_tokens = job
        out: list[tuple[str, int, float]] = []
        for text in texts:
            tokens = llama.tokenize(text.encode(), add_bos=True, special=True)
            started = time.perf_counter()
            res = llama.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, seed=0)
            out.append((res["choices"][0]["text"], res["usage"]["completion_tokens"], time.perf_counter() - started))
        conn.send(out)


def run_batched(scheduler: Scheduler, texts: list[str], max_tokens: int) -> tuple[list[Generated], list[float], float]:
    """All requests submitted together; each one's latency from submission to its answer."""
    token_lists = [scheduler.tokenize(t, add_bos=True, special=True) for t in texts]
    done_at: list[float] = [0.0] * len(texts)
    lock = threading.Lock()
    started = time.perf_counter()
    futures = []
    for i, tokens in enumerate(token_lists):
        future = scheduler.submit(tokens, sampling(max_tokens))

        def record(_: Any, i: int = i) -> None:
            with lock:
                done_at[i] = time.perf_counter()

        future.add_done_callback(record)
        futures.append(future)
    results = [f.result() for f in futures]
    wall = max(done_at) - started
    return results, [d - started for d in done_at], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=baseline_child, args=(child, args.model, args.n_ctx, args.threads), daemon=True
    )
    proc.start()
    assert parent.recv() == "ready"
    scheduler = Scheduler.load(
        EngineSettings(
            model_path=args.model,
            n_ctx=args.n_ctx,
            n_batch=512,
            n_parallel=max(levels),
            n_threads=args.threads,
            n_gpu_layers=0,
            use_mmap=True,
            cache_prompt=False,  # distinct prompts anyway; keeps both sides doing the same prompt work
        )
    )
    print(
        f"model {args.model}, {args.threads} threads, {args.tokens} tokens greedy, n_ctx {args.n_ctx}, "
        f"n_parallel {max(levels)}, rounds {args.rounds}"
    )
    agg: dict[tuple[str, int], list[float]] = {}
    lat: dict[tuple[str, int], list[float]] = {}
    same = differ = 0
    # a warm-up of each, not counted
    run_batched(scheduler, prompts(99, 2), 8)
    parent.send((prompts(98, 1), 8))
    parent.recv()
    for r in range(args.rounds):
        for c in levels:
            texts = prompts(r * 10 + c, c)
            results, latencies, wall = run_batched(scheduler, texts, args.tokens)
            agg.setdefault(("batched", c), []).append(sum(g.completion_tokens for g in results) / wall)
            lat.setdefault(("batched", c), []).extend(latencies)
            parent.send((texts, args.tokens))
            base: list[tuple[str, int, float]] = parent.recv()
            total = sum(s for _, _, s in base)
            agg.setdefault(("sequential", c), []).append(sum(n for _, n, _ in base) / total)
            waited = 0.0
            for _, _, s in base:  # arrivals together, served in order: each waits for those before it
                waited += s
                lat.setdefault(("sequential", c), []).append(waited)
            for g, (text, _, _) in zip(results, base, strict=True):
                if g.text == text:
                    same += 1
                else:
                    differ += 1
    print(f"{'concurrent':>10} | {'batched tok/s':>22} | {'sequential tok/s':>22} | {'p50 latency s (b / s)':>22}")
    for c in levels:
        b, s = agg[("batched", c)], agg[("sequential", c)]
        print(
            f"{c:>10} | {statistics.median(b):7.1f} ({min(b):5.1f}-{max(b):5.1f}) | "
            f"{statistics.median(s):7.1f} ({min(s):5.1f}-{max(s):5.1f}) | "
            f"{statistics.median(lat[('batched', c)]):9.2f} / {statistics.median(lat[('sequential', c)]):6.2f}"
        )
    print(f"greedy texts identical to create_completion: {same} of {same + differ}")
    print(f"scheduler stats: {scheduler.stats()}")
    scheduler.close()
    parent.send(None)
    proc.join(10)


if __name__ == "__main__":
    main()
