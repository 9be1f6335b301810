"""Limits on what a client can hold open, under `python -m handler` as a container starts it: a request
head over the limit is refused, a head or a body that never finishes does not keep the connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import service_process


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "CHAT_MODEL_PATH": str(tiny_model),
        "CHAT_MODEL_SHA256": "",  # clears the repository config's, which names the default model
        "CHAT_N_CTX": "512",
        "CHAT_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "CHAT_HEADER_TIMEOUT_SECONDS": "1",
        "CHAT_BODY_TIMEOUT_SECONDS": "1",
        "CHAT_LOG_LEVEL": "WARNING",
    }
    with service_process(env) as (url, _):
        yield url


def raw(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a socket timeout fails the test)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_request_head_over_the_limit_is_refused(server: str) -> None:
    sock = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n")
    try:
        assert read_all(sock).startswith(b"HTTP/1.1 431")
    except ConnectionResetError:
        pass  # closed while we were still sending: refused all the same
    finally:
        sock.close()
    assert httpx.get(f"{server}/health").status_code == 200


def test_an_unfinished_head_does_not_hold_the_connection(server: str) -> None:
    sock = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    try:
        assert read_all(sock) == b""  # closed by the server, nothing answered
    finally:
        sock.close()


def test_an_unfinished_body_is_answered_408(server: str) -> None:
    head = b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    sock = raw(server, head + b'{"prompt": ')
    try:
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert httpx.post(f"{server}/chat", json={"prompt": "still fine", "max_tokens": 3}).status_code == 200
