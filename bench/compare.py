"""The benchmark: this service against raw llama-cpp-python and llama-cpp-python's own server
(`python -m llama_cpp.server`), on the same model, prompts and sampling, in one run.

    make bench            # = .venv/bin/python bench/compare.py, after installing the `bench` extra

Rows: raw llama-cpp-python in process; the service's /chat through the Mangum handler and over
HTTP through uvicorn, each as a miss, a memory hit and a disk hit; the peer server, first and
repeated prompt (it has no cache). Each system runs in a process of its own, so its peak RSS is
its own, and each runs once per round (--rounds, 3), the samples pooled. Then paired misses: raw,
Mangum and uvicorn answer each of 24 new prompts back to back, and the median of the per-prompt
speed ratios judges "within 3% of raw" on a host too noisy for pooled figures to. Then N
identical concurrent requests to each server, cold start and the entry point's import time
(bench/cold_start.py). Prints tables, writes results.json and compare.png to --out.

Tokens per second count the tokens each answer has (at temperature 0 every system gives the
same answer to the same prompt, and the service's tests check it); for a hit it is the rate at
which the answer reaches the caller. "vs raw" divides a row's tokens per second by raw's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cold_start
from bench.child_snippets import PEAK_RSS
from bench.common import ROOT, Server, start_server, stop_server
from handler.core.config import load_settings
from handler.service.prompts import compose

RAW_SETUP = r"""
import json, sys, time
from llama_cpp import Llama
from handler.core.config import load_settings
from handler.engine.threads import usable_cores
from handler.service.prompts import compose
s = load_settings()
threads = usable_cores()  # as the service does; llama-cpp-python's default is half
llama = Llama(model_path=s.model_path, n_ctx=s.n_ctx, n_batch=s.n_batch, n_threads=threads, n_threads_batch=threads,
              n_gpu_layers=s.n_gpu_layers, seed=s.seed, verbose=False)
def complete(prompt, max_tokens):
    out = llama.create_completion(compose(s, prompt), max_tokens=max_tokens, stop=s.stop, temperature=s.temperature,
                                  top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repeat_penalty, seed=s.seed)
    return out["usage"]["completion_tokens"]
"""

RAW = (
    PEAK_RSS
    + RAW_SETUP
    + r"""
prompts, max_tokens = json.loads(sys.argv[1]), int(sys.argv[2])
def ask(prompt):
    t = time.perf_counter()
    tokens = complete(prompt, max_tokens)
    return time.perf_counter() - t, tokens
ask("warm-up")
rows = [ask(p) for p in prompts]
print(json.dumps({"generate": [r[0] for r in rows], "tokens": [r[1] for r in rows], "peak_rss_mb": peak_rss_mb()}))
"""
)

# Workers for paired misses: each answers one prompt per stdin line and replies "= seconds" (its
# other output, the service's log lines, goes by).
PAIRED_RAW = (
    RAW_SETUP
    + r"""
max_tokens = int(sys.argv[1])
complete("warm-up", max_tokens)
print("= ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    complete(json.loads(line), max_tokens)
    print("=", time.perf_counter() - t, flush=True)
"""
)

PAIRED_MANGUM = r"""
import json, sys, time
from mangum import Mangum
from handler.app import create_app
from handler.core.config import load_settings
from bench.common import FakeLambdaContext, lambda_event
max_tokens = int(sys.argv[1])
handler = Mangum(create_app(load_settings().model_copy(update={"cache_dir": None})), lifespan="off")
def ask(prompt):
    response = handler(lambda_event("function-url", {"prompt": prompt, "max_tokens": max_tokens}), FakeLambdaContext())
    assert response["statusCode"] == 200 and response["headers"]["x-cache"] == "MISS", response
ask("warm-up")
print("= ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    ask(json.loads(line))
    print("=", time.perf_counter() - t, flush=True)
"""

MANGUM = (
    PEAK_RSS
    + r"""
import json, sys, time
from mangum import Mangum
from handler.app import create_app
from handler.core.config import load_settings
from bench.common import FakeLambdaContext, lambda_event
prompts, max_tokens, hits, cache_dir = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = load_settings().model_copy(update={"cache_dir": cache_dir})
context = FakeLambdaContext()
events = {p: lambda_event("function-url", {"prompt": p, "max_tokens": max_tokens}) for p in ["warm-up", *prompts]}
def timed(handler, prompt, expect):
    t = time.perf_counter()
    response = handler(events[prompt], context)
    elapsed = time.perf_counter() - t
    assert response["statusCode"] == 200 and response["headers"]["x-cache"] == expect, response
    return elapsed
tiered = Mangum(create_app(s), lifespan="off")
timed(tiered, "warm-up", "MISS")  # loads the model
miss = [timed(tiered, p, "MISS") for p in prompts]
memory = [timed(tiered, prompts[i % len(prompts)], "HIT-MEMORY") for i in range(hits)]
disk_only = Mangum(create_app(s.model_copy(update={"cache_memory_entries": 0})), lifespan="off")
disk = [timed(disk_only, prompts[i % len(prompts)], "HIT-DISK") for i in range(hits)]
print(json.dumps({"miss": miss, "memory hit": memory, "disk hit": disk, "peak_rss_mb": peak_rss_mb()}))
"""
)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# The service as deployed: it writes its log line per request (to stdout; here a pipe or a file),
# and under Mangum it runs as in Lambda, where that line also carries the EMF metrics.
SERVICE_ENV = {"CHAT_LOG_LEVEL": "INFO"}
FUNCTION_ENV = {**SERVICE_ENV, "AWS_LAMBDA_FUNCTION_NAME": "bench"}


def child(code: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs `code` to its end in a fresh process; its last line of output is its JSON result."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CHAT_LOG_LEVEL": "WARNING", **(env or {})},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stop(server: Server) -> float:
    """Stops the server; returns its peak RSS, MB."""
    rss = peak_rss_mb(server.process.pid)
    stop_server(server)
    return rss


def timed_post(client: httpx.Client, path: str, body: dict[str, Any], expect_cache: str | None = None) -> float:
    t = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - t
    assert response.status_code == 200, response.text
    assert expect_cache is None or response.headers["x-cache"] == expect_cache, response.headers
    return elapsed


def concurrent(client: httpx.Client, path: str, body: dict[str, Any], n: int) -> float:
    """Wall time for n identical requests sent at once."""
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        assert client.post(path, json=body).status_code == 200

    threads = [threading.Thread(target=one) for _ in range(n)]
    t = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t


def uvicorn_service(prompts: list[str], max_tokens: int, hits: int, n_concurrent: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache_dir:
        main = start_server(
            "service",
            [sys.executable, "-m", "handler"],
            8771,
            env={**SERVICE_ENV, "PORT": "8771", "CHAT_CACHE_DIR": cache_dir},
        )
        try:
            disk_only = start_server(
                "service, disk tier only",
                [sys.executable, "-m", "handler"],
                8772,
                env={**SERVICE_ENV, "PORT": "8772", "CHAT_CACHE_DIR": cache_dir, "CHAT_CACHE_MEMORY_ENTRIES": "0"},
            )
        except RuntimeError:
            stop(main)
            raise
        try:
            with (
                httpx.Client(
                    base_url="http://127.0.0.1:8771", timeout=300, limits=httpx.Limits(max_connections=n_concurrent + 1)
                ) as client,
                httpx.Client(base_url="http://127.0.0.1:8772", timeout=300) as disk_client,
            ):

                def chat(prompt: str) -> dict[str, Any]:
                    return {"prompt": prompt, "max_tokens": max_tokens}

                timed_post(client, "/chat", chat("warm-up"), "MISS")
                miss = [timed_post(client, "/chat", chat(p), "MISS") for p in prompts]
                memory = [
                    timed_post(client, "/chat", chat(prompts[i % len(prompts)]), "HIT-MEMORY") for i in range(hits)
                ]
                timed_post(disk_client, "/chat", chat("warm-up"), "HIT-DISK")
                disk = [
                    timed_post(disk_client, "/chat", chat(prompts[i % len(prompts)]), "HIT-DISK") for i in range(hits)
                ]
                before = client.get("/health").json()["model"]["generations"]
                wall = concurrent(client, "/chat", chat("All at once: what rhymes with night?"), n_concurrent)
                generations = client.get("/health").json()["model"]["generations"] - before
        finally:
            rss = stop(main)
            stop(disk_only)
    return {
        "miss": miss,
        "memory hit": memory,
        "disk hit": disk,
        "peak_rss_mb": rss,
        "concurrent": {"wall_s": wall, "generations": generations},
    }


def reply(worker: subprocess.Popen[str]) -> str:
    """A paired-miss worker's next reply, past any log lines."""
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.startswith("= "):
            return line[2:].strip()
    raise RuntimeError("a paired-miss worker ended")


def paired_misses(prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Raw llama-cpp-python, the Mangum handler and uvicorn answer the same new prompt back to back,
    prompt after prompt, each in a process of its own (which system goes first rotates). A pair's
    ratio is untouched by the slow spells of a shared host that pooled figures take in."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, str(max_tokens)],
            cwd=ROOT,
            env={**env, **extra},
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for name, code, extra in (("raw", PAIRED_RAW, {}), ("Mangum", PAIRED_MANGUM, FUNCTION_ENV))
    }
    seconds: dict[str, list[float]] = {"raw": [], "Mangum": [], "uvicorn HTTP": []}
    with tempfile.TemporaryDirectory() as cache_dir:
        server = start_server(
            "service",
            [sys.executable, "-m", "handler"],
            8774,
            env={**SERVICE_ENV, "PORT": "8774", "CHAT_CACHE_DIR": cache_dir},
        )
        try:
            for worker in workers.values():
                assert reply(worker) == "ready"
            with httpx.Client(base_url="http://127.0.0.1:8774", timeout=300) as client:
                timed_post(client, "/chat", {"prompt": "warm-up", "max_tokens": max_tokens}, "MISS")
                names = list(seconds)
                for i, prompt in enumerate(prompts):
                    for name in names[i % 3 :] + names[: i % 3]:
                        if name == "uvicorn HTTP":
                            body = {"prompt": prompt, "max_tokens": max_tokens}
                            seconds[name].append(timed_post(client, "/chat", body, "MISS"))
                            continue
                        worker = workers[name]
                        assert worker.stdin is not None
                        worker.stdin.write(json.dumps(prompt) + "\n")
                        worker.stdin.flush()
                        seconds[name].append(float(reply(worker)))
        finally:
            stop(server)
            for worker in workers.values():
                worker.kill()
                worker.wait()
    result: dict[str, Any] = {"n": len(prompts)}
    for name in ("Mangum", "uvicorn HTTP"):
        ratios = sorted(raw / own for raw, own in zip(seconds["raw"], seconds[name], strict=True))
        result[name] = {
            "median": statistics.median(ratios),
            "q1": ratios[len(ratios) // 4],
            "q3": ratios[(3 * len(ratios)) // 4],
        }
    return result


def peer_server(prompts: list[str], max_tokens: int, n_concurrent: int) -> dict[str, Any]:
    settings = load_settings()
    threads = str(len(os.sched_getaffinity(0)))
    peer = start_server(
        "llama_cpp.server",
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            settings.model_path,
            "--port",
            "8773",
            "--n_ctx",
            str(settings.n_ctx),
            "--n_batch",
            str(settings.n_batch),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--n_gpu_layers",
            str(settings.n_gpu_layers),
            "--seed",
            str(settings.seed),
            "--verbose",
            "False",
        ],
        8773,
        "/v1/models",
    )
    try:
        with httpx.Client(
            base_url="http://127.0.0.1:8773", timeout=600, limits=httpx.Limits(max_connections=n_concurrent + 1)
        ) as client:

            def completion(prompt: str) -> dict[str, Any]:
                return {
                    "prompt": compose(settings, prompt),
                    "max_tokens": max_tokens,
                    "stop": settings.stop,
                    "temperature": settings.temperature,
                    "top_p": settings.top_p,
                    "top_k": settings.top_k,
                    "min_p": settings.min_p,
                    "repeat_penalty": settings.repeat_penalty,
                    "seed": settings.seed,
                }

            timed_post(client, "/v1/completions", completion("warm-up"))
            first = [timed_post(client, "/v1/completions", completion(p)) for p in prompts]
            repeated = [timed_post(client, "/v1/completions", completion(p)) for p in prompts]
            wall = concurrent(
                client, "/v1/completions", completion("All at once: what rhymes with night?"), n_concurrent
            )
    finally:
        rss = stop(peer)
    return {
        "first": first,
        "repeated": repeated,
        "peak_rss_mb": rss,
        "concurrent": {"wall_s": wall, "generations": n_concurrent},
    }


def summarize(
    system: str, path: str, answer: str, samples: list[tuple[float, int]], rss: float, raw_tps: float | None
) -> dict[str, Any]:
    """One row from (seconds, tokens) samples, pooled over the rounds."""
    seconds = [t for t, _ in samples]
    tps = sum(n for _, n in samples) / sum(seconds)
    ordered = sorted(seconds)
    return {
        "system": system,
        "path": path,
        "answer": answer,
        "n": len(seconds),
        "rps": len(seconds) / sum(seconds),
        "p50_ms": statistics.median(seconds) * 1000,
        "p95_ms": ordered[math.ceil(len(ordered) * 0.95) - 1] * 1000,
        "tok_s": tps,  # nearest rank
        "vs_raw": tps / raw_tps if raw_tps else 1.0,
        "peak_rss_mb": rss,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['system']}\n{r['path']}: {r['answer']}" for r in rows]
    colors = [
        "#888888"
        if r["system"] == "raw llama-cpp-python"
        else "#d98c3f"
        if r["system"] == "llama_cpp.server"
        else "#3f7fd9"
        for r in rows
    ]
    fig, (latency, speed) = plt.subplots(1, 2, figsize=(13, 0.55 * len(rows) + 1.5), sharey=True)
    y = range(len(rows))
    latency.barh(y, [r["p50_ms"] for r in rows], color=colors)
    latency.set_xscale("log")
    latency.set_xlabel("p50 latency, ms (log)")
    latency.set_yticks(list(y), labels, fontsize=8)
    latency.invert_yaxis()
    speed.barh(y, [r["tok_s"] for r in rows], color=colors)
    speed.set_xscale("log")
    speed.set_xlabel("tokens per second to the caller (log)")
    for axis, key, fmt in ((latency, "p50_ms", "{:,.2f}"), (speed, "tok_s", "{:,.0f}")):
        for i, r in enumerate(rows):
            axis.text(r[key], i, " " + fmt.format(r[key]), va="center", fontsize=7)
    fig.suptitle("The service against raw llama-cpp-python and llama_cpp.server (same model, prompts, sampling)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="distinct prompts: the misses")
    parser.add_argument("--hits", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=8, help="identical requests sent at once")
    parser.add_argument("--rounds", type=int, default=3, help="every system once per round; samples pooled")
    parser.add_argument("--paired", type=int, default=24, help="new prompts for the paired misses")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    words = ["day", "night", "sea", "tree", "rain", "light", "snow", "moon", "star", "wind"]
    prompts = [f"Question {i}: what rhymes with {word}?" for i, word in enumerate(words * 10)]
    prompts = prompts[: args.prompts]
    print(
        f"model {Path(settings.model_path).name}, max_tokens {args.max_tokens}, {len(prompts)} prompts, "
        f"{len(os.sched_getaffinity(0))} CPUs, n_gpu_layers {settings.n_gpu_layers}",
        flush=True,
    )

    # Every system once per round, rounds in turn, samples pooled: a slow spell of a shared host
    # falls on all of them rather than on whichever happened to run then.
    samples: dict[tuple[str, str, str], list[tuple[float, int]]] = {}
    rss: dict[tuple[str, str, str], float] = {}
    walls: dict[str, list[float]] = {"service": [], "peer": []}
    generations: dict[str, list[int]] = {"service": [], "peer": []}

    def add(row: tuple[str, str, str], seconds: list[float], peak_rss_mb: float) -> None:
        # request i asked prompts[i % len(prompts)], whose answer has tokens[...] tokens
        samples.setdefault(row, []).extend((t, tokens[i % len(tokens)]) for i, t in enumerate(seconds))
        rss[row] = max(rss.get(row, 0.0), peak_rss_mb)

    for round_ in range(1, args.rounds + 1):
        print(f"round {round_} of {args.rounds}", flush=True)
        raw = child(RAW, json.dumps(prompts), args.max_tokens)
        tokens = raw["tokens"]
        add(("raw llama-cpp-python", "in process", "generate"), raw["generate"], raw["peak_rss_mb"])
        with tempfile.TemporaryDirectory() as cache_dir:
            mangum = child(MANGUM, json.dumps(prompts), args.max_tokens, args.hits, cache_dir, env=FUNCTION_ENV)
        http = uvicorn_service(prompts, args.max_tokens, args.hits, args.concurrent)
        for path, result in (("Mangum", mangum), ("uvicorn HTTP", http)):
            for answer in ("miss", "memory hit", "disk hit"):
                add(("service /chat", path, answer), result[answer], result["peak_rss_mb"])
        peer = peer_server(prompts, args.max_tokens, args.concurrent)
        for answer in ("first", "repeated"):
            add(("llama_cpp.server", "HTTP", answer), peer[answer], peer["peak_rss_mb"])
        for name, result in (("service", http), ("peer", peer)):
            walls[name].append(result["concurrent"]["wall_s"])
            generations[name].append(result["concurrent"]["generations"])

    raw_key = ("raw llama-cpp-python", "in process", "generate")
    raw_tps = summarize(*raw_key, samples[raw_key], rss[raw_key], None)["tok_s"]
    rows = [summarize(*key, pooled, rss[key], None if key == raw_key else raw_tps) for key, pooled in samples.items()]
    concurrency = {
        name: {"wall_s": statistics.median(walls[name]), "generations": max(generations[name])} for name in walls
    }
    print("paired misses", flush=True)
    paired = paired_misses(
        [f"Pair {i}: what rhymes with {word}?" for i, word in enumerate(words * 10)][: args.paired], args.max_tokens
    )
    cold = cold_start.measure(args.cold_runs, no_sidecar=False)

    print("\n| system | path | answer | n | req/s | p50 ms | p95 ms | tok/s | vs raw | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['path']} | {r['answer']} | {r['n']} | {r['rps']:,.1f} | {r['p50_ms']:,.2f} | "
            f"{r['p95_ms']:,.2f} | {r['tok_s']:,.1f} | {r['vs_raw']:,.3f} | {r['peak_rss_mb']:,.0f} |"
        )
    print(f"\nmisses paired prompt by prompt ({paired['n']} new prompts): service speed / raw speed")
    print("| path | median | quartiles |\n|---|---|---|")
    for name in ("Mangum", "uvicorn HTTP"):
        print(f"| {name} | {paired[name]['median']:.3f} | {paired[name]['q1']:.3f} to {paired[name]['q3']:.3f} |")
    print(f"\n{args.concurrent} identical requests at once:")
    print("| server | generations | wall s |\n|---|---|---|")
    print(f"| service (uvicorn) | {concurrency['service']['generations']} | {concurrency['service']['wall_s']:.2f} |")
    print(
        f"| llama_cpp.server | {concurrency['peer']['generations']} (no cache) | {concurrency['peer']['wall_s']:.2f} |"
    )
    print(f"\ncold start, median of {args.cold_runs} fresh processes:")
    print("| what | seconds |\n|---|---|")
    for name, seconds in cold.items():
        print(f"| {name} | {seconds:.3f} |")

    results = {
        "model": Path(settings.model_path).name,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
        "rows": rows,
        "paired_misses": paired,
        "concurrent": {"n": args.concurrent, **concurrency},
        "cold_start_s": cold,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    plot(rows, args.out / "compare.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'compare.png'}")


if __name__ == "__main__":
    main()
