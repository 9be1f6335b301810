"""Shared fixtures: the tiny real model, settings around it, apps, a real uvicorn server, event payloads."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from handler.app import create_app
from handler.core.settings import Settings
from handler.observability.logs import JsonFormatter
from tests.helpers.lambda_events import EVENTS, FakeLambdaContext, lambda_body, lambda_event  # noqa: F401 (re-exported for the tests)
from tests.tiny_gguf import CONTEXT, write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def settings(tiny_model: Path, tmp_path: Path) -> Settings:
    return Settings(
        model_path=str(tiny_model),
        n_ctx=CONTEXT,
        n_gpu_layers=0,
        n_threads=1,
        flash_attn=False,  # as llama-cpp-python runs, whose answers the tests compare with
        max_tokens_default=16,
        cache_dir=str(tmp_path / "cache"),
        log_level="WARNING",
    )


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region for moto; no test ever reaches AWS."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """The request log lines (JSON), as the service writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("handler.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class LiveServer:
    """uvicorn serving an app on a loopback port, in a thread, for real HTTP."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def live_server() -> Iterator[Callable[[FastAPI], LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: FastAPI) -> LiveServer:
        server = LiveServer(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


@pytest.fixture
def server(app: FastAPI) -> Iterator[LiveServer]:
    """`app` behind a real uvicorn server."""
    with LiveServer(app) as live:
        yield live


def client_for(server: LiveServer) -> openai.OpenAI:
    """The official OpenAI client, talking to the server's /v1 API."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return client_for(server)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client talking to the same server as `client`."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


class WrappedEngine:
    """The real engine behind a seam where a test injects a fault or a delay; passes through otherwise."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Future[Any]:
        return self.real.submit(tokens, params, **kwargs)

    def __getattr__(self, name: str) -> Any:  # n_ctx, tokenize, stats, close, ...
        return getattr(self.real, name)


class PacedEvent(threading.Event):
    """A request's cancel flag, which the engine reads once a step for every running request: reading it
    costs `per_step_s` (the delay injected), counts steps, and notes when a test's `watch` was first set."""

    def __init__(self, inner: threading.Event | None, engine: PacedEngine) -> None:
        super().__init__()
        self.inner, self.engine = inner, engine

    def is_set(self) -> bool:
        engine = self.engine
        engine.tokens += 1
        if engine.watch is not None and engine.watch_seen_at is None and engine.watch.is_set():
            engine.watch_seen_at = engine.tokens
        time.sleep(engine.per_token_s)
        return self.inner is not None and self.inner.is_set()


class PacedEngine(WrappedEngine):
    """The real engine, `per_token_s` slower per step. Records how many steps the last generation saw,
    when a test's `watch` event was first seen set (in steps), and that a generation has ended."""

    def __init__(self, real: Any, per_token_s: float = 0.02, watch: threading.Event | None = None) -> None:
        super().__init__(real)
        self.per_token_s = per_token_s
        self.watch = watch
        self.watch_seen_at: int | None = None
        self.tokens = 0
        self.done = threading.Event()

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Future[Any]:
        self.tokens = 0
        kwargs["cancelled"] = PacedEvent(kwargs.get("cancelled"), self)
        future = super().submit(tokens, params, **kwargs)
        future.add_done_callback(lambda _: self.done.set())
        return future


def replaced_result(future: Future[Any], change: Callable[[Any], Any]) -> Future[Any]:
    """A future of the engine's answer, changed: how a test injects a bad answer."""
    out: Future[Any] = Future()

    def resolve(done: Future[Any]) -> None:
        error = done.exception()
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(change(done.result()))

    future.add_done_callback(resolve)
    return out


def same_generation(text: str, reference: str, reference_tokens: int, max_tokens: int) -> bool:
    """Whether our answer is llama-cpp-python's own. Equal, except where llama-cpp-python ran past
    max_tokens (it does while the text ends inside a UTF-8 character, as the random tiny model's often
    does): the service holds max_tokens, so its answer is the start of the same greedy text."""
    if reference_tokens <= max_tokens:
        return text == reference
    return reference.startswith(text) and (bool(text) or not reference)
