"""What each way of building llama.cpp's CPU code costs, on this machine: decode and prompt speed.

Run by hand (prints figures, asserts nothing):

    .venv/bin/python bench/cpu_builds.py [--rounds 3] [--build NAME=CMAKE_ARGS ...]

Each build is llama-cpp-python's wheel from infra/build-llama-cpp-python.sh (built once per flags, a few
minutes each), unpacked and run in a child process of its own. The builds run interleaved in rounds,
since this VM drifts: per round and build, one model load, a warm-up, then greedy generations whose
prompt and decode rates come from llama.cpp's own counters (llama_perf_context).
Defaults: `native-no-amx`, the Makefile's build (-march=native less AMX), and `portable`, the
image's (GGML_NATIVE=OFF: AVX2, FMA, F16C, BMI2, no AVX-512). `native` (with AMX) is left out where
the CPU has AMX: it crashes there (llama.cpp #20824); elsewhere it is the same as native-no-amx.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT

NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILDS = {
    "native-no-amx": f"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{NO_AMX}' -DCMAKE_CXX_FLAGS='{NO_AMX}'",
    "portable": "-DGGML_NATIVE=OFF",
}
MODELS = {
    "gemma-3-270m Q4_K_M": ROOT / "models" / "gemma-3-270m-q4_k_m.gguf",
    "SmolLM2-135M Q4_1": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
}
PROMPT = "Write a long and detailed story about a lighthouse keeper who finds a message in a bottle. " * 3

CHILD = r"""
import json, os, sys, llama_cpp
path, tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=os.cpu_count(), n_threads_batch=os.cpu_count(), verbose=False)
info = llama_cpp.llama_print_system_info().decode()
llm.create_completion(sys.argv[4], max_tokens=8, temperature=0.0)  # warm-up
rates = []
for _ in range(repeats):
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    llm.create_completion(sys.argv[4], max_tokens=tokens, temperature=0.0)
    perf = llama_cpp.llama_perf_context(llm.ctx)
    rates.append({"prompt": 1000 * perf.n_p_eval / perf.t_p_eval_ms, "decode": 1000 * perf.n_eval / perf.t_eval_ms})
print(json.dumps({"info": info, "rates": rates}))
"""


def wheel_for(cmake_args: str) -> Path:
    out = subprocess.run(
        [str(ROOT / "infra" / "build-llama-cpp-python.sh"), sys.executable, "0.3.36", cmake_args, "--wheel-only"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def cpu_has_amx() -> bool:
    return "amx_int8" in Path("/proc/cpuinfo").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="generations per round and build")
    parser.add_argument("--build", action="append", default=[], help="NAME=CMAKE_ARGS (replaces the defaults)")
    args = parser.parse_args()
    builds = dict(b.split("=", 1) for b in args.build) if args.build else dict(BUILDS)
    if not args.build and not cpu_has_amx():
        print("This CPU has no AMX: `native` (with AMX) would be the same build as native-no-amx.")
    unpacked: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmake_args in builds.items():
            wheel = wheel_for(cmake_args)
            target = Path(tmp) / name
            zipfile.ZipFile(wheel).extractall(target)
            unpacked[name] = target
            print(f"{name}: {cmake_args}\n  wheel {wheel}")
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        infos: dict[str, str] = {}
        for round_no in range(args.rounds):
            for model, path in MODELS.items():
                for name, target in unpacked.items():
                    done = subprocess.run(
                        [sys.executable, "-c", CHILD, str(path), str(args.tokens), str(args.repeats), PROMPT],
                        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode != 0:
                        print(f"round {round_no} {name} {model}: exit {done.returncode} {done.stderr[-300:]}")
                        continue
                    out = json.loads(done.stdout.splitlines()[-1])
                    infos[name] = out["info"]
                    slot = results.setdefault((model, name), {"prompt": [], "decode": []})
                    for rate in out["rates"]:
                        slot["prompt"].append(rate["prompt"])
                        slot["decode"].append(rate["decode"])
    print()
    for name, info in infos.items():
        print(f"{name} system info: {info.strip()}")
    print(f"\n{'model':22} {'build':15} {'decode tok/s':>22} {'prompt tok/s':>22}")
    for (model, name), slot in results.items():
        d, p = slot["decode"], slot["prompt"]
        print(
            f"{model:22} {name:15} {statistics.median(d):8.1f} ({min(d):.1f}-{max(d):.1f})"
            f" {statistics.median(p):10.1f} ({min(p):.1f}-{max(p):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
