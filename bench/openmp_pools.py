"""Why the model has a thread of its own: what a second OpenMP pool costs llama.cpp's decoding.

llama.cpp's CPU backend runs on OpenMP (libgomp), which keeps a pool of n_threads - 1 workers for
every thread that calls it. Here one thread generates throughout; the only difference between the
runs is whether one other thread has called the model once before, leaving its pool behind. With
more OpenMP threads than cores, libgomp stops spinning at barriers and sleeps instead: the
voluntary context switches per token show it, and the speed where barriers dominate (the tiny
test model, whose tokens are almost all barriers; or many cores).

    .venv/bin/python bench/openmp_pools.py [--model PATH] [--threads N] [--runs 3]

Measured on the 2-core VM, tiny model, 2 threads, 3 runs: one pool 2,761 to 3,654 tok/s and 0.1
switches per token; two pools 1,865 to 2,023 tok/s and 14 to 20 switches per token. (The default
model, whose tokens are mostly arithmetic, barely slows on 2 cores; 300 of its generations take
too long for this script: use bench/decode_overhead.py.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child_snippets import VOLUNTARY_SWITCHES

RUN = (
    VOLUNTARY_SWITCHES
    + r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
from llama_cpp import Llama
model, pools, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llama = Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
callers = [ThreadPoolExecutor(1) for _ in range(pools)]

def generate(i):
    llama.reset()
    return llama.create_completion(f"Once upon a time {i % 4}", max_tokens=16, temperature=0.0)["usage"]["completion_tokens"]

for caller in callers:  # each calls once: one pool per caller
    caller.submit(generate, 0).result()
before, started, tokens = switches(), time.perf_counter(), 0
for i in range(300):
    tokens += callers[0].submit(generate, i).result()  # then one thread does all the work
seconds = time.perf_counter() - started
print(f"{tokens / seconds:.0f} {(switches() - before) / tokens:.1f}")
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF; default: the tests' tiny model, written to a temporary folder")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from tests.tiny_gguf import write_tiny_gguf

            args.model = str(write_tiny_gguf(Path(tmp) / "tiny.gguf"))
        print(f"model {Path(args.model).name}, {args.threads} threads")
        print("| run | pools | tok/s | voluntary context switches per token |\n|---|---|---|---|")
        for run in range(1, args.runs + 1):
            for pools in (1, 2):
                out = subprocess.run(
                    [sys.executable, "-c", RUN, args.model, str(pools), str(args.threads)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rate, per_token = out.stdout.split()
                print(f"| {run} | {pools} | {rate} | {per_token} |", flush=True)


if __name__ == "__main__":
    main()
