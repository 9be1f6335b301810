"""Where decode speed goes between raw llama-cpp-python and the service, layer by layer.

Each layer runs in a fresh process (OpenMP and model state start clean), on the same prompt:
  raw            llama-cpp-python in the main thread
  raw-thread     the same from a worker thread
  holder         handler.engine.model.ModelHolder.complete in the main thread
  holder-thread  the same from a worker thread
  service        /v1/completions through the Mangum handler (the whole app)
  service-burst  /v1/completions over HTTP (uvicorn), after a burst of 8 concurrent requests and 2 streams

Besides tokens per second it prints the process's voluntary context switches per token: llama.cpp's
OpenMP keeps a worker pool per calling thread, and once the process holds more OpenMP threads than
cores libgomp sleeps at every barrier instead of spinning. One pool: under 1 switch per token;
more: hundreds. Before the model got a thread of its own (handler/model.py), service-burst measured
180 per token on 2 cores (where the speed hardly showed it) and, on 16 cores (an H100 machine, GPU
hidden), the service decoded at 55 tok/s where raw and holder reached 150 to 170.

    .venv/bin/python bench/decode_overhead.py [--model PATH] [--threads N] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child_snippets import VOLUNTARY_SWITCHES
from bench.common import ROOT

LAYER = (
    VOLUNTARY_SWITCHES
    + r"""
import json, os, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, os.environ["ROOT"])
layer, model, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompt = "Once upon a time"
if layer.startswith("raw"):
    from llama_cpp import Llama
    llama = Llama(model_path=model, n_gpu_layers=0, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                  seed=0, verbose=False)
    def generate(i):
        llama.reset()
        out = llama.create_completion(f"{prompt} {i}", max_tokens=tokens, temperature=0.0, seed=0)
        return out["usage"]["completion_tokens"]
elif layer.startswith("holder"):
    from handler.core.settings import Settings
    from handler.core.types import ModelInput
    from handler.engine.model import ModelHolder
    settings = Settings(model_path=model, n_gpu_layers=0, n_threads=threads, cache_dir=None, stop=[])
    holder = ModelHolder(settings)
    params = settings.sampling_params(tokens)
    def generate(i):
        return holder.generate(ModelInput.text(f"{prompt} {i}", special=True), params).completion_tokens
elif layer == "service-burst":
    import httpx
    from handler.app import create_app
    from handler.core.settings import Settings
    from tests.conftest import LiveServer
    settings = Settings(model_path=model, n_gpu_layers=0, n_threads=threads, cache_dir=None, metrics="off",
                        log_level="ERROR")
    http = httpx.Client(base_url=LiveServer(create_app(settings)).__enter__().url, timeout=600)
    def generate(i, n=tokens, stream=False):
        body = {"model": settings.served_model, "prompt": f"{prompt} {i}", "max_tokens": n, "stream": stream}
        response = http.post("/v1/completions", json=body)
        return 0 if stream else response.json()["usage"]["completion_tokens"]
    with ThreadPoolExecutor(8) as burst:
        list(burst.map(lambda i: generate(1000 + i, 4), range(8)))
    generate(2000, 4, stream=True)
    generate(2001, 4, stream=True)
else:
    from mangum import Mangum
    from handler.app import create_app
    from handler.core.settings import Settings
    from bench.common import FakeLambdaContext, lambda_body, lambda_event
    settings = Settings(model_path=model, n_gpu_layers=0, n_threads=threads, cache_dir=None, metrics="off",
                        log_level="ERROR")
    handler = Mangum(create_app(settings), lifespan="off")
    def generate(i):
        body = {"model": settings.served_model, "prompt": f"{prompt} {i}", "max_tokens": tokens}
        response = handler(lambda_event("function-url", body, path="/v1/completions"), FakeLambdaContext())
        return lambda_body(response)["usage"]["completion_tokens"]
run = generate
if layer.endswith("-thread"):
    pool = ThreadPoolExecutor(1)
    run = lambda i: pool.submit(generate, i).result()
run(0)  # warms up (and loads, for holder and service)
rates, generated, before = [], 0, switches()
for i in range(1, 5):
    t = time.perf_counter()
    n = run(i)
    rates.append(n / (time.perf_counter() - t))
    generated += n
print(json.dumps({"layer": layer, "tok_s": statistics.median(rates), "switches": (switches() - before) / generated}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"model {Path(args.model).name}, {args.threads} threads, {args.tokens} tokens, medians of 4")
    print("| layer | tok/s | voluntary context switches per token |\n|---|---|---|")
    for layer in ("raw", "raw-thread", "holder", "holder-thread", "service", "service-burst"):
        out = subprocess.run(
            [sys.executable, "-c", LAYER, layer, args.model, str(args.tokens), str(args.threads)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "ROOT": str(ROOT)},
            timeout=600,
        )
        if out.returncode != 0:
            print(f"| {layer} | failed: {out.stderr.strip().splitlines()[-1:]} |")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {layer} | {result['tok_s']:.1f} | {result['switches']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
