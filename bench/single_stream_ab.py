"""One request at a time: the service against llama-server, streamed and not, interleaved request by
request, to see where engine_compare.py's single-stream gap comes from. Needs `make llama-server` and
the Gemma model (`make model MODEL=gemma`).

    .venv/bin/python bench/single_stream_ab.py [--requests 40] [--spec] [--copy]

Prints the median, min and max tokens per second (completion tokens over the whole request) of each.
--spec adds llama-server with its own prompt-lookup speculation (`--spec-type ngram-simple
--spec-draft-n-max 8`), its strongest configuration without a draft model; --copy asks for answers that
quote their prompt (a paragraph to repeat), the workload such speculation is for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
SERVICE, PEER, SPEC = 8891, 8892, 8893
SPEC_ARGS = ["--spec-type", "ngram-simple", "--spec-draft-n-max", "8"]
PARAGRAPH = (
    "The lighthouse stood on the northern cliff for two hundred years. Every night its keeper climbed the "
    "stairs, trimmed the wick and watched the ships pass safely along the rocky coast."
)


def start(spec: bool) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "CHAT_MODEL_PATH": str(MODEL),
        "CHAT_MODEL_SHA256": "",
        "CHAT_N_THREADS": "2",
        "CHAT_CACHE_DIR": "",
        "CHAT_CACHE_MEMORY_ENTRIES": "0",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_METRICS": "off",
        "CHAT_GENERATION_TIMEOUT_SECONDS": "",
        "HOST": "127.0.0.1",
        "PORT": str(SERVICE),
    }
    peer = [str(ROOT / ".peer" / "llama-server"), "-m", str(MODEL), "-c", "4096", "-np", "8", "-kvu", "-t", "2"]
    peer += ["-tb", "2", "-b", "512", "--port", str(PEER), "--host", "127.0.0.1", "--no-webui"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    servers = [subprocess.Popen([sys.executable, "-m", "handler"], env=env, cwd=ROOT, **quiet)]
    servers.append(subprocess.Popen(peer, **quiet))
    if spec:
        servers.append(
            subprocess.Popen([*peer[: peer.index("--port")], "--port", str(SPEC), *peer[-3:], *SPEC_ARGS], **quiet)
        )
    for port in (SERVICE, PEER, SPEC) if spec else (SERVICE, PEER):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    return servers


def rate(port: int, stream: bool, prompt: str) -> float:
    """Completion tokens per second of one request, first byte to last."""
    body: dict[str, object] = {
        "model": "gemma-3-270m-q4_k_m",
        "prompt": prompt,
        "max_tokens": 48,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    url, headers = f"http://127.0.0.1:{port}/v1/completions", {"Cache-Control": "no-cache"}
    started = time.perf_counter()
    tokens = 0
    with httpx.Client(timeout=60) as client:
        if stream:
            with client.stream("POST", url, json=body, headers=headers) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
        else:
            tokens = client.post(url, json=body, headers=headers).json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--spec", action="store_true", help="add llama-server with ngram-simple speculation")
    parser.add_argument("--copy", action="store_true", help="answers that repeat a paragraph of the prompt")
    args = parser.parse_args()
    kinds = [("service, streamed", SERVICE, True), ("service, whole", SERVICE, False)]
    kinds += [("llama-server, streamed", PEER, True), ("llama-server, whole", PEER, False)]
    if args.spec:
        kinds += [("llama-server+spec, streamed", SPEC, True), ("llama-server+spec, whole", SPEC, False)]
    results: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    servers = start(args.spec)
    try:
        for i in range(args.requests):
            for name, port, stream in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # who goes first rotates
                if args.copy:  # the same request for every system within a round: their texts compare
                    prompt = f"Note {i}. Repeat this paragraph exactly.\n\n{PARAGRAPH}\n\nRepeated:\n\n"
                else:
                    prompt = f"Write one sentence about topic #{i}-{name}: the sea, in plain words."
                results[name].append(rate(port, stream, prompt))
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    for name, values in results.items():
        print(
            f"{name:24} median {statistics.median(values):6.1f}  min {min(values):6.1f}  max {max(values):6.1f} tok/s"
        )


if __name__ == "__main__":
    main()
