"""One request at a time: the service against llama-server, streamed and not, interleaved request by
request, to see where engine_compare.py's single-stream gap comes from. Needs `make llama-server` and
the Gemma model (`make model MODEL=gemma`).

    .venv/bin/python bench/single_stream_ab.py [--requests 40] [--spec] [--copy]

Prints the median, min and max tokens per second (completion tokens over the whole request) of each.
--spec adds llama-server with its own prompt-lookup speculation (`--spec-type ngram-simple
--spec-draft-n-max 8`), its strongest configuration without a draft model, and the service with its own
speculation off (`CHAT_SPECULATIVE_DRAFT_MAX=0`); --copy asks for answers that quote their prompt (a
paragraph to repeat), the workload such speculation is for, and checks that the service's whole answers
are the same text with and without its drafts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, start_server, stop_server

MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
SERVICE, PEER, SPEC, PLAIN = 8891, 8892, 8893, 8894
SPEC_ARGS = ["--spec-type", "ngram-simple", "--spec-draft-n-max", "8"]
PARAGRAPH = (
    "The lighthouse stood on the northern cliff for two hundred years. Every night its keeper climbed the "
    "stairs, trimmed the wick and watched the ships pass safely along the rocky coast."
)


def start(stack: ExitStack, spec: bool) -> None:
    """The service, llama-server and (with `spec`) llama-server speculating, each stopped when `stack` unwinds;
    returns once all answer /health, and raises with a server's output when one does not come up."""
    env = {
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
    commands: list[tuple[str, list[str], int, dict[str, str] | None]] = [
        ("service", [sys.executable, "-m", "handler"], SERVICE, env),
        ("llama-server", peer, PEER, None),
    ]
    if spec:
        plain = {**env, "PORT": str(PLAIN), "CHAT_SPECULATIVE_DRAFT_MAX": "0"}
        commands.append(("service, no drafts", [sys.executable, "-m", "handler"], PLAIN, plain))
        speculating = [*peer[: peer.index("--port")], "--port", str(SPEC), *peer[-3:], *SPEC_ARGS]
        commands.append(("llama-server+spec", speculating, SPEC, None))
    for name, command, port, extra in commands:
        stack.callback(stop_server, start_server(name, command, port, env=extra))


def rate(port: int, stream: bool, prompt: str) -> tuple[float, str | None]:
    """Completion tokens per second of one request, first byte to last, and its text when whole."""
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
    tokens, text = 0, None
    with httpx.Client(timeout=60) as client:
        if stream:
            with client.stream("POST", url, json=body, headers=headers) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
        else:
            answer = client.post(url, json=body, headers=headers).json()
            tokens, text = answer["usage"]["completion_tokens"], answer["choices"][0]["text"]
    return tokens / (time.perf_counter() - started), text


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
        kinds += [("service no drafts, streamed", PLAIN, True), ("service no drafts, whole", PLAIN, False)]
    results: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    texts: dict[str, list[str | None]] = {name: [] for name, _, _ in kinds}
    with ExitStack() as servers:
        start(servers, args.spec)
        for i in range(args.requests):
            for name, port, stream in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # who goes first rotates
                if args.copy:  # the same request for every system within a round: their texts compare
                    prompt = f"Note {i}. Repeat this paragraph exactly.\n\n{PARAGRAPH}\n\nRepeated:\n\n"
                else:
                    prompt = f"Write one sentence about topic #{i}-{name}: the sea, in plain words."
                tokens_per_s, text = rate(port, stream, prompt)
                results[name].append(tokens_per_s)
                texts[name].append(text)
    for name, values in results.items():
        print(
            f"{name:28} median {statistics.median(values):6.1f}  min {min(values):6.1f}  max {max(values):6.1f} tok/s"
        )
    if args.spec and args.copy:
        same = texts["service, whole"] == texts["service no drafts, whole"]
        print("service whole answers with and without drafts:", "identical" if same else "DIFFERENT")


if __name__ == "__main__":
    main()
