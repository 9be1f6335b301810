"""The engine benchmark (issue 15): this service's continuous-batching engine against llama.cpp's own
server (`llama-server`, slots and a unified KV cache) and llama-cpp-python's server (one request at a
time), on the same model, threads, prompts and greedy sampling, at 1, 2, 4 and 8 concurrent requests.

    make bench-engine     # = .venv/bin/python bench/engine_compare.py
    .venv/bin/python bench/engine_compare.py --rounds 1 --concurrency 1,2 --tokens 16   # a quick look

Every request is a streamed `POST /v1/completions` with `stream_options.include_usage`, so time to
first token is measured alike everywhere; each asks for a prompt of its own (~20 tokens, "Write one
sentence about topic #k: ..."), so no response cache or prefix trick helps beyond the prompts'
common opening. Per system and concurrency: aggregate generated tokens per second (the batch's
completion tokens over its wall time), p50 and p95 latency (nearest rank), p50 time to first token,
and the median decode rate of a request (tokens after the first over the time after the first).

The three servers start once, each is warmed with one request, then they are measured in rounds
(--rounds, 3): in a round, every concurrency, every system once, the systems' order rotating round
by round, so a slow spell of a shared host falls on all of them alike. Samples are pooled across
rounds; aggregate rates are the median of the rounds, with their min-max. Then the issue's targets,
met or not. Then (unless --no-prefix) what a shared prompt prefix saves: the service with
`reuse_prompt_prefix` on and off, 8 concurrent requests that share a ~300-token opening.

Results: bench/results/engine_compare.json. Every server started here is stopped at the end, also
on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Server, start_server, stop_server
from handler.core.config import load_settings

RESULTS = ROOT / "bench" / "results" / "engine_compare.json"
DEFAULT_MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
# a GPU run points it at a CUDA build; GPU offload itself comes from the environment:
# CHAT_N_GPU_LAYERS for the service, LLAMA_ARG_N_GPU_LAYERS for llama-server
LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER", ROOT / ".peer" / "llama-server"))
N_CTX = 4096  # one KV cache of 4096 cells for all slots, in every system that batches (96 a slot beyond 42)
TIMEOUT = httpx.Timeout(120.0, connect=10.0)

SERVICE, LLAMA, PEER = "service", "llama-server", "llama-cpp-python server"
PREFIX_ON, PREFIX_OFF = "service, prefix reuse on", "service, prefix reuse off"
PORTS = {SERVICE: 8781, LLAMA: 8782, PEER: 8783, PREFIX_OFF: 8784}

# Topics of about the same length in tokens, so every request's prompt is about as long.
TOPICS = (
    "the ocean at night",
    "a quiet mountain town",
    "the smell of fresh bread",
    "an old wooden bridge",
    "the first snow of winter",
    "a busy railway station",
    "a garden after the rain",
    "the light of a candle",
    "a ship leaving the harbour",
    "the sound of distant thunder",
    "a library in the morning",
    "the desert under the stars",
)

# The shared opening of the prefix section: about 300 tokens of system text.
SHARED_PREFIX = (
    "You are the writing assistant of a small public library. Readers of every age come to you with short "
    "requests, and you answer each of them with care. Keep every answer to a single sentence, written in plain "
    "and friendly English, without lists, headings or quotation marks. Prefer concrete images to abstract words: "
    "a reader should be able to see, hear or smell what you describe. Avoid clichés such as 'once upon a time' "
    "or 'in a world where', and never address the reader directly. Do not mention that you are an assistant, "
    "do not apologise, and do not ask questions back. When a topic names a place, describe one detail of it "
    "that a visitor might miss; when it names an object, describe how it feels in the hand; when it names a "
    "moment, describe what changes during it. Use the present tense unless the topic is clearly in the past. "
    "Choose common words over rare ones, since some readers are learning the language, and keep the sentence "
    "under thirty words. If a topic is unclear, pick the most ordinary meaning and write about that. The "
    "library's readers value calm, precise writing; they dislike exaggeration, exclamation marks and jokes at "
    "anyone's expense. Each request below comes from a different reader, and none of them sees the others' "
    "answers, so every sentence must stand on its own. The library closes at eight in the evening, opens at "
    "nine in the morning, and lends books, maps and recordings to anyone who lives in the valley.\n\n"
)


@dataclass
class Sample:
    """One streamed request, timed from the moment it was sent."""

    latency: float
    ttft: float | None  # to the first chunk with text; None when no text came
    tokens: int
    finish_reason: str | None
    tokens_from: str  # "usage" (the stream's), "length" (finished by max_tokens) or "non-stream"
    start: float
    end: float

    def decode_tok_s(self) -> float | None:
        """Tokens after the first over the time after the first: the decode rate alone."""
        if self.ttft is None or self.tokens < 2 or self.latency <= self.ttft:
            return None
        return (self.tokens - 1) / (self.latency - self.ttft)


@dataclass
class Batch:
    """n requests sent at once to one system."""

    system: str
    concurrency: int
    round: int
    samples: list[Sample] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return max(s.end for s in self.samples) - min(s.start for s in self.samples) if self.samples else math.nan

    @property
    def tok_s(self) -> float:
        """Aggregate: every completion token of the batch over its wall time; NaN if any request failed."""
        if self.errors or not self.samples:
            return math.nan
        return sum(s.tokens for s in self.samples) / self.wall


class RequestFailed(Exception):
    """A request that did not end as a complete answer; carries what reproduces it."""

    def __init__(self, message: str, url: str, body: dict[str, Any], status: int | None = None) -> None:
        super().__init__(message)
        self.detail = {"error": message, "status": status, "url": url, "request": body}


# --- the servers ----------------------------------------------------------------------------------


def start_service(name: str, port: int, model: Path, threads: int, n_parallel: int, reuse: bool, logs: Path) -> Server:
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CHAT_MODEL_PATH": str(model),
        # config.yaml's hash names its own model_path's file (the embedded default, not Gemma); left
        # empty, the identity comes from the file itself. The response cache is off anyway.
        "CHAT_MODEL_SHA256": "",
        "CHAT_N_THREADS": str(threads),
        "CHAT_N_PARALLEL": str(n_parallel),
        "CHAT_N_CTX": str(n_ctx_for(n_parallel)),
        "CHAT_REUSE_PROMPT_PREFIX": "true" if reuse else "false",
        "CHAT_CACHE_DIR": "",  # no disk tier: the response cache must never answer
        "CHAT_CACHE_MEMORY_ENTRIES": "0",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_MAX_PENDING_GENERATIONS": "64",
        # llama-server has no deadline; the service's would cut long answers under load.
        "CHAT_GENERATION_TIMEOUT_SECONDS": "",
        "CHAT_METRICS": "off",  # llama-server keeps no such counters either
    }
    server = start_server(name, [sys.executable, "-m", "handler"], port, logs=logs, env=env)
    server.model_id = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
    server.command = [f"{k}={v}" for k, v in env.items() if k.startswith("CHAT_")] + server.command  # for the record
    return server


def n_ctx_for(n_parallel: int) -> int:
    """Room for every slot's prompt and answer at the widest concurrency (the GPU run goes to 64)."""
    return max(N_CTX, 96 * n_parallel)


def start_llama_server(model: Path, threads: int, n_parallel: int, n_batch: int, logs: Path) -> Server:
    if not LLAMA_SERVER.exists():
        raise RuntimeError(f"{LLAMA_SERVER} is missing: `make llama-server` builds it")
    port = PORTS[LLAMA]
    command = [
        str(LLAMA_SERVER),
        *("-m", str(model), "-c", str(n_ctx_for(n_parallel)), "-np", str(n_parallel), "-kvu"),
        *("-t", str(threads), "-tb", str(threads), "-b", str(n_batch)),
        *("--host", "127.0.0.1", "--port", str(port), "--no-webui"),
        # Its prompt cache stays on, as the service's prefix reuse does.
    ]
    return start_server(LLAMA, command, port, logs=logs)  # its /health is 503 until the model is loaded


def cpu_features(system_info: str) -> frozenset[str]:
    """The CPU features a llama.cpp build uses, from its system info ("CPU : SSE3 = 1 | AVX = 1 | ...")."""
    cpu = system_info.partition("CPU :")[2].splitlines()[0] if "CPU :" in system_info else ""
    return frozenset(re.findall(r"(\w+) = 1", cpu))


def check_same_build(model: Path) -> frozenset[str]:
    """Refuses to compare against a llama-server built with other CPU flags than the service's llama.cpp
    (`make llama-server` builds it with the Makefile's LLAMA_CMAKE_ARGS, as `make install` builds the
    service's); returns the features they share. llama-server prints its system info only at log
    verbosity 4: a short run of its own, apart from the measured one, reads it."""
    service = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = [str(LLAMA_SERVER), "-m", str(model), "-c", "512", "--host", "127.0.0.1", "--port", "0", "-lv", "4"]
    peer = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if "CPU :" in line:
                    peer = line
                    break
        finally:
            proc.kill()
    ours, theirs = cpu_features(service), cpu_features(peer)
    if ours != theirs:
        raise RuntimeError(
            f"llama-server uses other CPU features than the service: only the service {sorted(ours - theirs)}, "
            f"only llama-server {sorted(theirs - ours)}; rebuild it with `make llama-server`"
        )
    return ours


def start_peer_python(model: Path, threads: int, n_batch: int, logs: Path) -> Server:
    port = PORTS[PEER]
    command = [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(model)),
        *("--n_ctx", str(N_CTX), "--n_batch", str(n_batch)),
        *("--n_threads", str(threads), "--n_threads_batch", str(threads)),
        *("--host", "127.0.0.1", "--port", str(port), "--verbose", "False"),
        # By default a waiting request cuts the stream that runs (it ends with [DONE] and no finish
        # reason); here they queue instead, as they do on the other two.
        *("--interrupt_requests", "False"),
    ]
    return start_server(PEER, command, port, "/v1/models", logs=logs)


# --- requests -------------------------------------------------------------------------------------


def request_body(server: Server, prompt: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    """Greedy sampling, every field the same for all systems (the service refuses unknown fields)."""
    body: dict[str, Any] = {
        "model": server.model_id,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
        "seed": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


HEADERS = {"Cache-Control": "no-cache"}  # the service's response cache must not answer; others ignore it


def stream_one(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> Sample:
    url, body = f"{server.url}/v1/completions", request_body(server, prompt, max_tokens)
    ttft, finish, usage = None, None, None
    start = time.perf_counter()
    with client.stream("POST", url, json=body, headers=HEADERS) as response:
        if response.status_code != 200:
            raise RequestFailed(response.read().decode(errors="replace")[:500], url, body, response.status_code)
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and `: ping` comments
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:  # an error after the 200: the service sends it as an event
                raise RequestFailed(json.dumps(chunk["error"]), url, body, 200)
            for choice in chunk.get("choices") or []:
                if ttft is None and choice.get("text"):
                    ttft = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage  # llama-server puts it in the finish chunk
    end = time.perf_counter()
    if finish is None:
        raise RequestFailed("the stream ended without a finish reason", url, body, 200)
    if usage is not None:
        tokens, source = int(usage["completion_tokens"]), "usage"
    elif finish == "length":
        tokens, source = max_tokens, "length"
    else:
        tokens, source = -1, "non-stream"  # counted after the batch, outside the timed span
    return Sample(end - start, ttft, tokens, finish, source, start, end)


def count_tokens(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> int:
    """The completion tokens of the same (greedy, hence identical) answer, from a non-stream request."""
    url, body = f"{server.url}/v1/completions", request_body(server, prompt, max_tokens, stream=False)
    response = client.post(url, json=body, headers=HEADERS)
    if response.status_code != 200:
        raise RequestFailed(response.text[:500], url, body, response.status_code)
    return int(response.json()["usage"]["completion_tokens"])


class Clients:
    """A thread pool whose threads each keep one httpx client per server (connections stay open)."""

    def __init__(self, size: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="bench")
        self.local = threading.local()
        self.opened: list[httpx.Client] = []
        self.lock = threading.Lock()

    def client(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(timeout=TIMEOUT)
            with self.lock:
                self.opened.append(client)
        return client

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for client in self.opened:
            client.close()


def run_batch(clients: Clients, server: Server, prompts: list[str], max_tokens: int, round_: int) -> Batch:
    """All prompts at once; a barrier lines the threads up so the requests leave together."""
    barrier = threading.Barrier(len(prompts), timeout=60)  # a lost thread must not hang the run

    def one(prompt: str) -> Sample | RequestFailed:
        client = clients.client()
        barrier.wait()
        try:
            return stream_one(client, server, prompt, max_tokens)
        except RequestFailed as failed:
            return failed
        except httpx.HTTPError as exc:
            return RequestFailed(f"{type(exc).__name__}: {exc}", f"{server.url}/v1/completions", {"prompt": prompt})

    results = list(clients.pool.map(one, prompts))
    batch = Batch(server.name, len(prompts), round_)
    for prompt, result in zip(prompts, results, strict=True):
        if isinstance(result, RequestFailed):
            batch.errors.append({"system": server.name, "concurrency": len(prompts), **result.detail})
            continue
        if result.tokens < 0:
            result.tokens = count_tokens(clients.client(), server, prompt, max_tokens)
        batch.samples.append(result)
    return batch


class Prompts:
    """Distinct prompts of about the same length: a counter makes each one new."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix, self.k = prefix, 0

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            self.k += 1
            topic = TOPICS[self.k % len(TOPICS)]
            out.append(f"{self.prefix}Write one sentence about topic #{self.k}: {topic}, in plain and simple words.")
        return out


def warm(clients: Clients, server: Server, prompts: Prompts, max_tokens: int) -> None:
    """One request first: it loads the service's model and touches every server's code paths."""
    batch = run_batch(clients, server, prompts.take(1), max_tokens, round_=-1)
    if batch.errors:
        raise RuntimeError(f"warm-up of {server.name} failed: {batch.errors[0]}")


def rounds(
    clients: Clients,
    servers: list[Server],
    concurrency: list[int],
    n_rounds: int,
    max_tokens: int,
    prompts: Prompts,
    on_batch: Callable[[Batch], None],
) -> list[Batch]:
    """Interleaved: per round, per concurrency, each system once, the order rotating by round."""
    batches = []
    for r in range(n_rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        for n in concurrency:
            for server in order:
                batch = run_batch(clients, server, prompts.take(n), max_tokens, r)
                batches.append(batch)
                on_batch(batch)
    return batches


# --- figures --------------------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q) - 1, 0)]


def summarize(batches: list[Batch]) -> dict[str, Any]:
    """One system at one concurrency: samples pooled over the rounds, aggregate rates per round."""
    samples = [s for b in batches for s in b.samples]
    per_round = [b.tok_s for b in batches]
    valid = [x for x in per_round if not math.isnan(x)]
    decode = [d for s in samples if (d := s.decode_tok_s()) is not None]
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    return {
        "n_requests": len(samples),
        "n_errors": sum(len(b.errors) for b in batches),
        "tok_s_rounds": per_round,
        "tok_s": statistics.median(valid) if valid else math.nan,
        "tok_s_min": min(valid) if valid else math.nan,
        "tok_s_max": max(valid) if valid else math.nan,
        "p50_latency_s": nearest_rank([s.latency for s in samples], 0.5),
        "p95_latency_s": nearest_rank([s.latency for s in samples], 0.95),
        "p50_ttft_s": nearest_rank(ttfts, 0.5),
        "decode_tok_s": statistics.median(decode) if decode else math.nan,
        "mean_tokens": statistics.mean(s.tokens for s in samples) if samples else math.nan,
        "tokens_from": sorted({s.tokens_from for s in samples}),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def print_tables(summary: dict[str, dict[int, dict[str, Any]]], concurrency: list[int]) -> None:
    base = min(concurrency)
    for n in concurrency:
        print(f"\n{n} concurrent request{'s' if n > 1 else ''}")
        header = (
            f"{'system':<26}{'tok/s':>8}{'min-max':>15}{'p50 lat':>9}{'p95 lat':>9}{'p50 TTFT':>10}"
            f"{'decode/req':>11}{'vs llama-server':>16}{f'vs own c={base}':>13}"
        )
        print(header)
        print("-" * len(header))
        for system, by_n in summary.items():
            row = by_n[n]
            extra = ""
            if system == SERVICE:
                vs_llama = ratio(row["tok_s"], summary[LLAMA][n]["tok_s"]) if LLAMA in summary else math.nan
                vs_own = ratio(row["tok_s"], by_n[base]["tok_s"])
                extra = f"{vs_llama:>15.2f}x{vs_own:>12.2f}x"
            spread = f"{row['tok_s_min']:.1f}-{row['tok_s_max']:.1f}"
            print(
                f"{system:<26}{row['tok_s']:>8.1f}{spread:>15}{row['p50_latency_s']:>8.2f}s"
                f"{row['p95_latency_s']:>8.2f}s{row['p50_ttft_s'] * 1000:>8.0f}ms{row['decode_tok_s']:>11.1f}{extra}"
                + (f"   ({row['n_errors']} failed)" if row["n_errors"] else "")
            )


def targets(summary: dict[str, dict[int, dict[str, Any]]], concurrency: list[int]) -> list[dict[str, Any]]:
    """The issue's three targets, judged on the lowest and highest concurrency measured (1 and 8)."""
    lo, hi = min(concurrency), max(concurrency)
    service, llama = summary[SERVICE], summary.get(LLAMA)
    checks = [
        (
            f"single-stream decode (c={lo}): service >= 0.95x llama-server",
            ratio(service[lo]["decode_tok_s"], llama[lo]["decode_tok_s"]) if llama else math.nan,
            0.95,
        ),
        (f"c={hi} aggregate: service >= 1.6x its own c={lo}", ratio(service[hi]["tok_s"], service[lo]["tok_s"]), 1.6),
        (
            f"c={hi} aggregate: service >= 1.0x llama-server",
            ratio(service[hi]["tok_s"], llama[hi]["tok_s"]) if llama else math.nan,
            1.0,
        ),
    ]
    return [{"target": t, "ratio": r, "needed": need, "met": bool(r >= need)} for t, r, need in checks]


def print_targets(results: list[dict[str, Any]], concurrency: list[int]) -> None:
    print("\nTargets of issue 15" + ("" if (min(concurrency), max(concurrency)) == (1, 8) else " (stated for 1 and 8)"))
    for t in results:
        verdict = "n/a" if math.isnan(t["ratio"]) else ("met" if t["met"] else "NOT met")
        print(f"  {t['target']:<58} {t['ratio']:>6.2f}x (needs {t['needed']:.2f}x)  {verdict}")


# --- the prefix section ---------------------------------------------------------------------------


def prefix_section(clients: Clients, on: Server, off: Server, n: int, n_rounds: int, max_tokens: int) -> dict[str, Any]:
    """8 concurrent requests sharing a ~300-token opening, to the service with prefix reuse on and
    off. Each is warmed with one request of the same opening first: reuse needs a finished request
    to share with, as a deployed service's system prompt would have."""
    print(f"\nshared-prefix section: {on.name} against {off.name}", flush=True)
    prompts = Prompts(SHARED_PREFIX)
    for server in (on, off):
        warm(clients, server, prompts, max_tokens)
    batches = rounds(clients, [on, off], [n], n_rounds, max_tokens, prompts, report_batch)
    result: dict[str, Any] = {"concurrency": n, "prefix_chars": len(SHARED_PREFIX)}
    for server in (on, off):
        result[server.name] = summarize([b for b in batches if b.system == server.name])
    result["errors"] = [e for b in batches for e in b.errors]
    print(f"\nShared ~300-token prefix, {n} concurrent requests")
    print(f"{'system':<28}{'tok/s':>8}{'min-max':>15}{'p50 TTFT':>10}{'p50 lat':>9}")
    for server in (on, off):
        row = result[server.name]
        spread = f"{row['tok_s_min']:.1f}-{row['tok_s_max']:.1f}"
        print(
            f"{server.name:<28}{row['tok_s']:>8.1f}{spread:>15}{row['p50_ttft_s'] * 1000:>8.0f}ms"
            f"{row['p50_latency_s']:>8.2f}s"
        )
    on_row, off_row = result[on.name], result[off.name]
    print(
        f"  reuse on vs off: aggregate {ratio(on_row['tok_s'], off_row['tok_s']):.2f}x, "
        f"p50 TTFT {ratio(on_row['p50_ttft_s'], off_row['p50_ttft_s']):.2f}x"
    )
    return result


# --- main -----------------------------------------------------------------------------------------


def report_batch(batch: Batch) -> None:
    """A line per batch as it ends, so a long run shows progress (and failures at once)."""
    failed = f", {len(batch.errors)} FAILED: {batch.errors[0]['error'][:120]}" if batch.errors else ""
    print(
        f"  round {batch.round + 1} c={batch.concurrency:<2} {batch.system:<28} {batch.tok_s:7.1f} tok/s"
        f" in {batch.wall:6.2f}s{failed}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="concurrent requests, comma-separated (1,2,4,8)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request (48)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF model (the Gemma 3 270M default)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every system (2)")
    parser.add_argument("--skip-peer-python", action="store_true", help="leave llama-cpp-python's server out")
    parser.add_argument("--no-prefix", action="store_true", help="skip the shared-prefix section")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON ({RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    if min(args.concurrency) < 1 or args.rounds < 1 or args.tokens < 1:
        parser.error("--rounds, --tokens and every --concurrency must be at least 1")
    args.model = args.model.resolve()
    return args


def kept(stack: ExitStack, server: Server) -> Server:
    """The server, to be stopped when the stack unwinds: at the end, on an error or on Ctrl-C."""
    stack.callback(stop_server, server)
    return server


def finite(value: Any) -> Any:
    """NaN (a figure with no samples) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(finite(results), indent=2, default=str, allow_nan=False))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    n_batch = load_settings().n_batch  # the service's; llama-server and the peer get the same
    width = max(args.concurrency)
    print(
        f"model {args.model.name}, {args.threads} threads, max_tokens {args.tokens}, concurrency {args.concurrency}, "
        f"{args.rounds} round(s); service and llama-server with {width} parallel slots",
        flush=True,
    )
    prompts = Prompts()
    with tempfile.TemporaryDirectory(prefix="engine-compare-") as tmp, ExitStack() as stack:
        logs = Path(tmp)
        clients = Clients(width)
        stack.callback(clients.close)
        servers = [
            kept(stack, start_service(SERVICE, PORTS[SERVICE], args.model, args.threads, width, True, logs)),
            kept(stack, start_llama_server(args.model, args.threads, width, n_batch, logs)),
        ]
        features = check_same_build(args.model)
        print(f"service and llama-server both built with CPU features: {' '.join(sorted(features))}", flush=True)
        if not args.skip_peer_python:
            servers.append(kept(stack, start_peer_python(args.model, args.threads, n_batch, logs)))
        for server in servers:
            warm(clients, server, prompts, args.tokens)
        print("warmed up; measuring", flush=True)
        batches = rounds(clients, servers, args.concurrency, args.rounds, args.tokens, prompts, report_batch)
        summary = {
            s.name: {
                n: summarize([b for b in batches if b.system == s.name and b.concurrency == n])
                for n in args.concurrency
            }
            for s in servers
        }
        print_tables(summary, args.concurrency)
        checked = targets(summary, args.concurrency)
        print_targets(checked, args.concurrency)
        results: dict[str, Any] = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "n_ctx": n_ctx_for(width),
            "n_batch": n_batch,
            "commands": {s.name: s.command for s in servers},
            "summary": {s: {str(n): row for n, row in by_n.items()} for s, by_n in summary.items()},
            "targets": checked,
            "prefix": None,
            "batches": [asdict(b) for b in batches],
            "errors": [e for b in batches for e in b.errors],
        }
        write(results, args.out)  # now, so that a failure in the prefix section keeps the main figures
        if not args.no_prefix:
            # The first service has prefix reuse on; a second one, off, runs only for this section.
            off = kept(
                stack, start_service(PREFIX_OFF, PORTS[PREFIX_OFF], args.model, args.threads, width, False, logs)
            )
            on = replace(servers[0], name=PREFIX_ON)  # the same process, under its section name
            results["prefix"] = prefix_section(clients, on, off, width, args.rounds, args.tokens)
            results["errors"] += results["prefix"]["errors"]
            write(results, args.out)
        if results["errors"]:
            first = json.dumps(results["errors"][0], indent=2)[:2000]
            print(f"\n{len(results['errors'])} request(s) failed; the first:\n{first}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
