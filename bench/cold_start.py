"""Cold start: a fresh process importing the entry point and answering its first request.

    .venv/bin/python bench/cold_start.py [--runs 3]

Each figure is the median over fresh Python processes, measured inside the process from its
first line (interpreter start-up itself is not counted). Rows:
  - import of handler.lambda_handler (config read, app built, no model);
  - import + first /chat through the Mangum handler, model load included (a cold miss);
  - the same prompt from raw llama-cpp-python: import, Llama(...), create_completion;
  - import + first /chat answered from a disk cache a previous container left (a cold hit);
  - the same cold hit on /v1/chat/completions (chat messages are keyed by the text the model's own
    chat template makes, so the template is read from the GGUF header first);
  - the same cold /chat hit without `model_sha256` in the config: the identity comes from the
    digest beside the model file (`make model` writes it), or, with `--no-sidecar`, from reading it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT
from handler.core.config import load_settings

PROMPT = "What is the capital of France?"

SERVICE = r"""
import time; t0 = time.perf_counter()
import json, os, sys
import handler.lambda_handler as entry
t_import = time.perf_counter() - t0
from bench.common import FakeLambdaContext, lambda_event  # the standard library only: timed with the service
if os.environ.get("BENCH_ROUTE") == "chat-completions":
    body = {"model": entry.app.state.settings.served_model, "max_tokens": 32, "messages": [{"role": "user", "content": sys.argv[1]}]}
    event = lambda_event("apigw-http-v2", body, path="/v1/chat/completions")
else:
    event = lambda_event("apigw-http-v2", {"prompt": sys.argv[1], "max_tokens": 32})
response = entry.handler(event, FakeLambdaContext())
assert response["statusCode"] == 200, response
print(json.dumps({"import": t_import, "first": time.perf_counter() - t0, "x_cache": response["headers"]["x-cache"]}))
"""

RAW = r"""
import time; t0 = time.perf_counter()
import json, os, sys
from llama_cpp import Llama
from handler.core.config import load_settings
from handler.engine.threads import usable_cores
from handler.service.prompts import compose
s = load_settings()
llama = Llama(model_path=s.model_path, n_ctx=s.n_ctx, n_batch=s.n_batch, n_threads=usable_cores(),
              n_threads_batch=usable_cores(), n_gpu_layers=s.n_gpu_layers, verbose=False)
out = llama.create_completion(compose(s, sys.argv[1]), max_tokens=32, stop=s.stop, temperature=s.temperature)
print(json.dumps({"first": time.perf_counter() - t0}))
"""


def run(code: str, env: dict[str, str]) -> dict:
    """One fresh process, as a function container runs: Lambda's environment (so metrics take the
    EMF path and prometheus_client is never imported) and compiled bytecode at hand (pip compiles
    the image's packages; here the first run writes it)."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    lambda_env = {"AWS_LAMBDA_FUNCTION_NAME": "cold-start-bench", "CHAT_LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-c", code, PROMPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **lambda_env, **env},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(runs: int, no_sidecar: bool = False) -> dict[str, float]:
    """Median seconds of each row over `runs` fresh processes."""
    sidecar = Path(load_settings().model_path + ".sha256.json")
    rows: dict[str, list[float]] = {
        "import handler.lambda_handler": [],
        "import + first /chat, cold miss": [],
        "raw llama-cpp-python, import + load + answer": [],
        "import + first /chat, cold disk hit": [],
        "import + first /v1/chat/completions, cold disk hit": [],
        "import + first /chat, cold disk hit, no model_sha256 in config": [],
    }
    with tempfile.TemporaryDirectory() as cache:
        run(SERVICE, {"CHAT_CACHE_DIR": cache})  # writes the bytecode an image would ship
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            miss = run(SERVICE, {"CHAT_CACHE_DIR": cache})
            assert miss["x_cache"] == "MISS"
            hit = run(SERVICE, {"CHAT_CACHE_DIR": cache})
            assert hit["x_cache"] == "HIT-DISK"
        rows["import handler.lambda_handler"] += [miss["import"], hit["import"]]
        rows["import + first /chat, cold miss"].append(miss["first"])
        rows["import + first /chat, cold disk hit"].append(hit["first"])
        with tempfile.TemporaryDirectory() as cache:
            chat = {"CHAT_CACHE_DIR": cache, "BENCH_ROUTE": "chat-completions"}
            assert run(SERVICE, chat)["x_cache"] == "MISS"
            chat_hit = run(SERVICE, chat)
            assert chat_hit["x_cache"] == "HIT-DISK"
        rows["import + first /v1/chat/completions, cold disk hit"].append(chat_hit["first"])
        with tempfile.TemporaryDirectory() as cache:
            undeclared = {"CHAT_CACHE_DIR": cache, "CHAT_MODEL_SHA256": "", "CHAT_MODEL_DOWNLOAD_DIR": cache}
            assert run(SERVICE, undeclared)["x_cache"] == "MISS"
            shutil.rmtree(Path(cache) / "digests", ignore_errors=True)  # a new container: only the sidecar is left
            if no_sidecar:
                sidecar.unlink(missing_ok=True)
            undeclared_hit = run(SERVICE, undeclared)
            assert undeclared_hit["x_cache"] == "HIT-DISK"
        rows["import + first /chat, cold disk hit, no model_sha256 in config"].append(undeclared_hit["first"])
        rows["raw llama-cpp-python, import + load + answer"].append(run(RAW, {})["first"])
    return {name: statistics.median(values) for name, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-sidecar", action="store_true", help="remove the model's digest sidecar first")
    args = parser.parse_args()
    results = measure(args.runs, args.no_sidecar)
    print(f"median of {args.runs} fresh processes each, max_tokens 32, {os.cpu_count()} CPUs")
    print("| what | seconds |\n|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
