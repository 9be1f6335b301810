"""Two processes, one /tmp: the disk cache and the S3 model download stay right when processes share them.

Lambda Managed Instances run one Python process per concurrent request in one execution environment
(Mangum mode), and a server may run several uvicorn workers: all of them share /tmp. Here two real
servers (`python -m handler`, as a container starts them) share one cache folder and one model download
folder, with the model in S3 (moto's server). The S3 endpoint is reached through a relay that delivers
bytes slowly, the one fault injected: a slow network, so that the second process asks for the model while
the first is still downloading it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import pytest

from tests.helpers.server import ServiceProcess

BUCKET, KEY = "models-bucket", "gguf/tiny.gguf"
PROMPTS = [f"question {i}: what is {i} times {i + 1}?" for i in range(10)]
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class SlowRelay:
    """A TCP relay in front of the S3 endpoint that passes requests on at once and answers slowly (`chunk`
    bytes per `pause`): the injected fault. The bytes are the real server's."""

    def __init__(self, upstream: tuple[str, int], chunk: int = 8192, pause: float = 0.025) -> None:
        self.upstream, self.chunk, self.pause = upstream, chunk, pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.pause), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, pause: float) -> None:
        try:
            while data := source.recv(self.chunk):
                sink.sendall(data)
                time.sleep(pause)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def s3_endpoint(tiny_model: Path) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", **_client_credentials())
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(tiny_model), BUCKET, KEY)
    relay = SlowRelay((host, port))
    try:
        yield relay.url
    finally:
        relay.close()
        server.stop()


def _client_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


class Server(ServiceProcess):
    """`python -m handler` in a process of its own, its JSON log lines kept in a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir / f"{name}.log")

    def chat(self, prompt: str) -> tuple[int, str, str]:
        response = httpx.post(f"{self.url}/chat", json={"prompt": prompt, "max_tokens": 16}, timeout=120)
        body = response.json()
        return response.status_code, body.get("text", json.dumps(body)), response.headers.get("x-cache", "")

    def messages(self) -> list[str]:
        assert self.log is not None
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line)["message"])
            except (ValueError, KeyError, TypeError):
                pass  # uvicorn's own start-up lines
        return out


def server_env(tiny_model: Path, endpoint: str, cache_dir: Path | None, download_dir: Path) -> dict[str, str]:
    return {
        **AWS_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "CHAT_MODEL_PATH": f"s3://{BUCKET}/{KEY}",
        "CHAT_MODEL_SHA256": hashlib.sha256(tiny_model.read_bytes()).hexdigest(),
        "CHAT_MODEL_DOWNLOAD_DIR": str(download_dir),
        "CHAT_CACHE_DIR": str(cache_dir) if cache_dir else "",
        "CHAT_N_CTX": "512",
        "CHAT_N_THREADS": "1",
        "CHAT_LOG_LEVEL": "INFO",
        "CHAT_METRICS": "off",
    }


@pytest.fixture(scope="module")
def reference(tiny_model: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each prompt's answer from a process of its own, with no disk cache, asked one prompt at a time."""
    folder = tmp_path_factory.mktemp("reference")
    server = Server("reference", server_env(tiny_model, s3_endpoint, None, folder / "models"), folder)
    try:
        server.wait_ready()
        answers = {}
        for prompt in PROMPTS:
            status, text, _ = server.chat(prompt)
            assert status == 200, text
            answers[prompt] = text
        return answers
    finally:
        server.stop()


@pytest.fixture
def two_servers(tiny_model: Path, s3_endpoint: str, tmp_path: Path) -> Iterator[tuple[Server, Server, Path, Path]]:
    cache_dir, download_dir = tmp_path / "llm-chat-cache", tmp_path / "models"
    env = server_env(tiny_model, s3_endpoint, cache_dir, download_dir)
    servers = (Server("a", env, tmp_path), Server("b", env, tmp_path))
    try:
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1], cache_dir, download_dir
    finally:
        for server in servers:
            server.stop()


def test_two_processes_share_one_download_and_one_cache(
    two_servers: tuple[Server, Server, Path, Path], tiny_model: Path, reference: dict[str, str]
) -> None:
    a, b, _, download_dir = two_servers
    first, *rest = PROMPTS

    # A starts the download; B asks for the model while A's partial file is still being written.
    with ThreadPoolExecutor(2) as pool:
        a_first = pool.submit(a.chat, first)
        deadline = time.monotonic() + 60
        while not list(download_dir.glob("*.partial-*")):
            assert not a_first.done(), "the download ended before the second process could ask for the model"
            assert time.monotonic() < deadline, "no download started"
            time.sleep(0.005)
        b_first = pool.submit(b.chat, rest[0])
        answers = [(first, *a_first.result()), (rest[0], *b_first.result())]
    assert [status for _, status, _, _ in answers] == [200, 200], answers  # neither lost its download

    model_files = sorted(p.name for p in download_dir.iterdir())
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert model_files == [f"{sha[:16]}-tiny.gguf"]  # one complete file, no partial one left
    assert (download_dir / model_files[0]).read_bytes() == tiny_model.read_bytes()
    logged = a.messages() + b.messages()
    assert logged.count("model downloaded") == 1  # downloaded once, by one of them
    assert logged.count("model downloaded by another process") == 1  # the other waited and took it

    # Then every prompt to both at once: both may generate one and write its key together.
    with ThreadPoolExecutor(8) as pool:
        futures = [(p, pool.submit(server.chat, p)) for p in PROMPTS for server in (a, b)]
        answers += [(p, *f.result()) for p, f in futures]
    # And again: now answered from the caches, the other process's answers from the shared disk.
    with ThreadPoolExecutor(8) as pool:
        futures = [(p, pool.submit(server.chat, p)) for p in PROMPTS for server in (b, a)]
        again = [(p, *f.result()) for p, f in futures]
    answers += again

    wrong = [(p, status, text, reference[p]) for p, status, text, _ in answers if (status, text) != (200, reference[p])]
    assert not wrong
    assert {source for *_, source in again} <= {"HIT-MEMORY", "HIT-DISK"}

    for server in (a, b):
        disk = httpx.get(f"{server.url}/health", timeout=10).json()["cache"]["disk"]
        assert (disk["degraded"], disk["faults"]) == (False, 0)
        assert disk["entries"] == len(PROMPTS)  # one entry per prompt, whoever wrote it


def test_a_prompt_answered_by_one_process_is_a_disk_hit_in_the_other(
    two_servers: tuple[Server, Server, Path, Path], reference: dict[str, str]
) -> None:
    a, b, _, _ = two_servers
    for prompt in PROMPTS[:4]:
        assert a.chat(prompt) == (200, reference[prompt], "MISS")
        assert b.chat(prompt) == (200, reference[prompt], "HIT-DISK")
