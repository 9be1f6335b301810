"""What `n_gpu_layers` buys: prompt and decode speed per offload setting, raw llama-cpp-python and the
service's /chat (Mangum handler) on the same model.

Needs llama-cpp-python built with CUDA (`CMAKE_ARGS="-DGGML_CUDA=on"`, as the Dockerfile's ACCEL=cuda
does); on a CPU-only build every setting runs on the CPU.

    .venv/bin/python bench/gpu_offload.py [--model PATH] [--layers 0 8 -1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT

PROMPT = "Once upon a time, by the sea,"


def raw(model: str, layers: int, decode_tokens: int, runs: int) -> dict[str, Any]:
    """Prompt speed on a 500-word prompt, and the same requests the service gets below, straight."""
    from llama_cpp import Llama

    from handler.engine.threads import usable_cores

    threads = usable_cores()  # as the service uses; llama-cpp-python's default is half
    started = time.perf_counter()
    llama = Llama(
        model_path=model,
        n_gpu_layers=layers,
        n_ctx=2048,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )
    load_s = time.perf_counter() - started
    long_prompt = " ".join(["word"] * 500)
    prompt_tps, decode_tps = [], []
    for i in range(runs + 1):  # the first run warms up
        llama.reset()
        t = time.perf_counter()
        out = llama.create_completion(long_prompt, max_tokens=1, temperature=0.0)
        prompt_tps.append(out["usage"]["prompt_tokens"] / (time.perf_counter() - t))
        llama.reset()
        t = time.perf_counter()
        out = llama.create_completion(f"{PROMPT} {i}", max_tokens=decode_tokens, temperature=0.0, seed=0)
        decode_tps.append(out["usage"]["completion_tokens"] / (time.perf_counter() - t))
    return {
        "load_s": load_s,
        "prompt_tok_s": statistics.median(prompt_tps[1:]),
        "raw_tok_s": statistics.median(decode_tps[1:]),
    }


def service(model: str, layers: int, decode_tokens: int, runs: int) -> dict[str, Any]:
    """The same requests through the Mangum handler (/v1/completions, for its usage), then memory hits."""
    from mangum import Mangum

    from bench.common import FakeLambdaContext, lambda_body, lambda_event
    from handler.app import create_app
    from handler.core.settings import Settings

    settings = Settings(
        model_path=model,
        n_gpu_layers=layers,
        cache_dir=None,
        log_level="ERROR",
        max_tokens_limit=max(1024, decode_tokens),
        metrics="off",
    )
    handler = Mangum(create_app(settings), lifespan="off")

    def ask(i: int) -> tuple[int, float]:
        body = {"model": settings.served_model, "prompt": f"{PROMPT} {i}", "max_tokens": decode_tokens}
        t = time.perf_counter()
        response = handler(lambda_event("function-url", body, path="/v1/completions"), FakeLambdaContext())
        elapsed = time.perf_counter() - t
        assert response["statusCode"] == 200, response
        return lambda_body(response)["usage"]["completion_tokens"], elapsed

    misses = [ask(i) for i in range(runs + 1)][1:]  # the first loads the model
    hits = [ask(i)[1] for i in range(1, runs + 1)]
    return {
        "service_tok_s": statistics.median(n / s for n, s in misses),
        "memory_hit_ms": statistics.median(hits) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 9, -1], help="n_gpu_layers settings; -1: all")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from llama_cpp import llama_supports_gpu_offload

    print(f"model {Path(args.model).name}; GPU offload supported by this build: {llama_supports_gpu_offload()}")
    print(
        f"{'n_gpu_layers':>12} {'load s':>7} {'prompt tok/s':>13} {'raw tok/s':>10} {'service tok/s':>14} "
        f"{'ratio':>6} {'hit ms':>7}"
    )
    results = []
    for layers in args.layers:
        row = {
            "n_gpu_layers": layers,
            **raw(args.model, layers, args.decode_tokens, args.runs),
            **service(args.model, layers, args.decode_tokens, args.runs),
        }
        results.append(row)
        row["ratio"] = row["service_tok_s"] / row["raw_tok_s"]
        print(
            f"{layers:>12} {row['load_s']:7.2f} {row['prompt_tok_s']:13.0f} {row['raw_tok_s']:10.1f} "
            f"{row['service_tok_s']:14.1f} {row['ratio']:6.3f} {row['memory_hit_ms']:7.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
