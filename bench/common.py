"""What the benchmarks share: the repository root, servers started in processes of their own and stopped, and
the Lambda events and context object that the entry point takes.

This module imports only the standard library (and tests/helpers/lambda_events.py, which does too), so a
child process that times the entry point can import its events from here after it, and time only the
service; what starts servers imports its HTTP client when it is called.

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # in a script run as bench/x.py
    from bench.common import ROOT, start_server, stop_server
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.lambda_events import FakeLambdaContext, lambda_body, lambda_event

__all__ = ["ROOT", "FakeLambdaContext", "Server", "lambda_body", "lambda_event", "start_server", "stop_server"]

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 180.0  # a cold start on a busy 2-core host can take a while


@dataclass
class Server:
    """A server process that `start_server` started and saw answer; its output is in `log`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    command: list[str]
    model_id: str = "default"  # what a request names as its `model`, where the benchmark asks
    remove_log: bool = field(default=False, repr=False)  # a temporary file: stopping removes it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """The last of what the server wrote."""
        return self.log.read_text(errors="replace")[-4000:]


def start_server(
    name: str,
    command: list[str],
    port: int,
    ready_path: str = "/health",
    *,
    logs: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = START_SECONDS,
) -> Server:
    """Starts `command` (with `env` on top of this environment, the repository importable) and waits until
    `ready_path` on `port` answers 200. Its output goes to a file in `logs` (else to a temporary file that
    `stop_server` removes), so a full pipe never stalls it; a server that exits first, or does not answer
    within `timeout_s`, is stopped and raises RuntimeError with that output."""
    from tests.helpers.server import stop_process, wait_until_answers

    slug = name.replace(" ", "_").replace(",", "")
    if logs is None:
        descriptor, path = tempfile.mkstemp(prefix=f"{slug}-", suffix=".log")
        os.close(descriptor)
        log = Path(path)
    else:
        log = logs / f"{slug}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    server = Server(name, port, process, log, command, remove_log=logs is None)
    try:
        wait_until_answers(f"{server.url}{ready_path}", process, timeout_s, server.output, ok_only=True, name=name)
    except RuntimeError as error:
        stop_process(process)
        if server.remove_log:
            log.unlink()
        raise RuntimeError(f"{error}\n(command: {' '.join(command)})") from None
    return server


def stop_server(server: Server) -> None:
    """Terminate, then kill what does not end within 15 s. A server that had already exited says so, with its
    output, on stderr: the requests that failed on it say only that they could not connect."""
    from tests.helpers.server import crash_message, stop_process

    if server.process.poll() is not None:
        message = crash_message(server.process.returncode, server.name)
        print(f"{message} before it was stopped:\n{server.output()}", file=sys.stderr)
    stop_process(server.process)
    if server.remove_log:
        server.log.unlink(missing_ok=True)
