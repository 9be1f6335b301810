"""Latency of a memory hit and a disk hit against a miss, through the Mangum handler and over
HTTP through uvicorn, on the configured model (the embedded default unless CHAT_CONFIG says).

    .venv/bin/python bench/cache_latency.py [--hits 300] [--misses 8] [--max-tokens 32]

Prints a table; asserts nothing. Misses use distinct prompts so no answer is reused; hits
repeat one prompt. The disk rows run with the memory tier off, so every hit reads SQLite.
The first request of each app loads the model and is not counted.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.app import create_app  # noqa: E402
from handler.config import load_settings  # noqa: E402
from handler.logs import JsonFormatter  # noqa: E402
from tests.conftest import FakeLambdaContext, lambda_event  # noqa: E402

PROMPT = "What is the capital of France?"


def timed(call: Callable[[], str], n: int, expect: str) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        source = call()
        samples.append((time.perf_counter() - start) * 1000)
        assert source == expect, f"expected {expect}, got {source}"
    return samples


def mangum_caller(handler, prompt: Callable[[], str], max_tokens: int) -> Callable[[], str]:
    events: dict[str, dict] = {}  # built once per prompt: the payload is the platform's work, not ours
    context = FakeLambdaContext()

    def call() -> str:
        text = prompt()
        if text not in events:
            events[text] = lambda_event("apigw-http-v2", {"prompt": text, "max_tokens": max_tokens})
        response = handler(events[text], context)
        assert response["statusCode"] == 200, response
        return response["headers"]["x-cache"]

    return call


def http_caller(client: httpx.Client, prompt: Callable[[], str], max_tokens: int) -> Callable[[], str]:
    def call() -> str:
        response = client.post("/chat", json={"prompt": prompt(), "max_tokens": max_tokens})
        assert response.status_code == 200, response.text
        return response.headers["x-cache"]

    return call


def counter(prefix: str) -> Callable[[], str]:
    state = {"n": 0}

    def next_prompt() -> str:
        state["n"] += 1
        return f"{prefix} question number {state['n']}: what rhymes with day?"

    return next_prompt


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "handler"], cwd=ROOT, stdout=subprocess.DEVNULL,  # logs too
                            stderr=subprocess.DEVNULL, env={**os.environ, **env, "PORT": str(port)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def row(path: str, what: str, samples: list[float], miss_p50: float | None) -> str:
    p50 = statistics.median(samples)
    p95 = sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]
    ratio = f"{miss_p50 / p50:,.0f}x" if miss_p50 else "1x"
    return f"| {path} | {what} | {len(samples)} | {p50:.3f} | {p95:.3f} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=300)
    parser.add_argument("--misses", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    settings = load_settings()
    # The per-request JSON log line is formatted and written as in production, but to /dev/null.
    quiet = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    quiet.setFormatter(JsonFormatter())
    logging.getLogger("handler").addHandler(quiet)
    print(f"model {Path(settings.model_path).name}, max_tokens {args.max_tokens}, CPU threads {os.cpu_count()}")
    rows = ["| path | answer | n | p50 ms | p95 ms | miss p50 / p50 |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as cache_dir:
        # Mangum, in process: memory and disk tiers; then a second app with memory off reads the disk.
        from mangum import Mangum

        tiered = Mangum(create_app(settings.model_copy(update={"cache_dir": cache_dir})), lifespan="off")
        mangum_caller(tiered, lambda: PROMPT, args.max_tokens)()  # loads the model: not a miss's cost
        memory = timed(mangum_caller(tiered, lambda: PROMPT, args.max_tokens), args.hits, "HIT-MEMORY")
        disk_only = Mangum(create_app(settings.model_copy(update={"cache_dir": cache_dir, "cache_memory_entries": 0})),
                           lifespan="off")
        disk = timed(mangum_caller(disk_only, lambda: PROMPT, args.max_tokens), args.hits, "HIT-DISK")
        miss = timed(mangum_caller(tiered, counter("mangum"), args.max_tokens), args.misses, "MISS")
        miss_p50 = statistics.median(miss)
        rows += [row("Mangum handler", "miss", miss, None), row("Mangum handler", "memory hit", memory, miss_p50),
                 row("Mangum handler", "disk hit", disk, miss_p50)]

    with tempfile.TemporaryDirectory() as cache_dir:
        servers = [start_server(8761, {"CHAT_CACHE_DIR": cache_dir}),
                   start_server(8762, {"CHAT_CACHE_DIR": cache_dir, "CHAT_CACHE_MEMORY_ENTRIES": "0"})]
        try:
            with httpx.Client(base_url="http://127.0.0.1:8761", timeout=120) as client, \
                    httpx.Client(base_url="http://127.0.0.1:8762", timeout=120) as disk_client:
                http_caller(client, lambda: PROMPT, args.max_tokens)()
                memory = timed(http_caller(client, lambda: PROMPT, args.max_tokens), args.hits, "HIT-MEMORY")
                disk = timed(http_caller(disk_client, lambda: PROMPT, args.max_tokens), args.hits, "HIT-DISK")
                miss = timed(http_caller(client, counter("http"), args.max_tokens), args.misses, "MISS")
        finally:
            for server in servers:
                server.terminate()
                server.wait()
        miss_p50 = statistics.median(miss)
        rows += [row("uvicorn, HTTP", "miss", miss, None), row("uvicorn, HTTP", "memory hit", memory, miss_p50),
                 row("uvicorn, HTTP", "disk hit", disk, miss_p50)]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
