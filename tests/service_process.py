"""The service as a container starts it, `python -m handler`, in a process of its own on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crash_message(returncode: int | None) -> str:
    """What a test says when the process died: a signal (a kernel's segfault) is named as such."""
    if returncode is not None and returncode < 0:
        return f"the service process died of signal {-returncode} (a crash inside llama.cpp?)"
    return f"the service process exited with {returncode}"


@contextmanager
def service_process(env: dict[str, str], start_timeout_s: float = 30) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m handler` with these CHAT_* settings on top of the environment; yields its URL and process
    once /health answers, and stops it after."""
    port = free_port()
    full = {**os.environ, "PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", "PORT": str(port), **env}
    process = subprocess.Popen([sys.executable, "-m", "handler"], env=full, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, crash_message(process.returncode)
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(10)
