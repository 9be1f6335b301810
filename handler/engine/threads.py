"""The threads of the service, in one place, and why each exists.

- The event loop (uvicorn's, or the one Mangum runs per invocation): routes, the memory cache tier,
  and everything that must not block.
- Worker threads (Starlette's thread pool, `run_in_threadpool`): what blocks briefly off the loop:
  disk and shared cache tiers, hashing a model file once, reading a GGUF header.
- The single-flight pool (`handler.service.single_flight`, 4 threads): each waits on one distinct
  generation for the requests that share it, and stores the answer even when they have gone.
- One stream thread per streamed generation: it waits on the generation and hands pieces to the loop.
- The scheduler thread (`handler.engine.scheduler`), one per loaded model: it loads the model and its
  context (`handler.engine.llama_context`), its LoRA adapters and its embedding context, and makes every
  llama.cpp call that computes. llama.cpp's CPU backend (OpenMP) keeps a pool of worker threads for
  every thread that calls it; a second calling thread oversubscribes the cores and slows every token,
  so no other thread ever decodes.
  Other threads only submit and tokenize.
- The shared cache tier's writer (2 threads): a write never holds up an answer for long.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """All the cores this process may use: llama-cpp-python's default is half, which leaves a
    function's cores idle (the README has the figures)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
