"""Real server processes on loopback ports: `python -m handler` as a container starts it, and the waiting and
stopping that any server started in a process of its own needs (bench/common.py starts its servers with these).

A server that exits before it answers, or does not answer in time, fails with what it wrote."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crash_message(returncode: int | None, name: str = "the service process") -> str:
    """What a test says when the process died: a signal (a kernel's segfault) is named as such."""
    if returncode is not None and returncode < 0:
        return f"{name} died of signal {-returncode} (a crash inside llama.cpp?)"
    return f"{name} exited with {returncode}"


def wait_until_answers(
    url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float = 60,
    output: Callable[[], str] = lambda: "",
    ok_only: bool = False,
    name: str = "the service process",
) -> httpx.Response:
    """Polls `url` until the server answers (with 200, where `ok_only`: llama-server answers 503 while it
    loads); raises RuntimeError, naming the server `name` and with `output()` (what the process wrote),
    when it exits first or does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200 or not ok_only:
                return response
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{crash_message(process.returncode, name)} before {url} answered\n{output()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer {url} within {timeout_s:.0f} s\n{output()}")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """Terminate, then kill what does not end within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


class ServiceProcess:
    """`python -m handler` in a process of its own on a free loopback port, with `env` (CHAT_* settings) on top
    of this environment. Its output goes to `log` when given (else to this process's own output, where
    pytest captures it). Started at once, so that several start together; then `wait_ready`, and `stop`."""

    def __init__(self, env: Mapping[str, str], log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out: IO[bytes] | None = log.open("wb") if log else None
        full = {**os.environ, "PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", **env, "PORT": str(self.port)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handler"],
            env=full,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT if self._out else None,
        )

    def output(self) -> str:
        """What the process wrote (its last 4000 characters), where it went to a log."""
        return self.log.read_text(errors="replace")[-4000:] if self.log else "(its output is above)"

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until /health answers; fails with the process's output when it exits first or is too slow."""
        try:
            wait_until_answers(f"{self.url}/health", self.process, timeout_s, self.output)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.process)
        if self._out:
            self._out.close()


@contextmanager
def service_process(env: dict[str, str], start_timeout_s: float = 30) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m handler` with these CHAT_* settings on top of the environment; yields its URL and process
    once /health answers, and stops it after."""
    server = ServiceProcess(env)
    try:
        server.wait_ready(start_timeout_s)
        yield server.url, server.process
    finally:
        server.stop()
