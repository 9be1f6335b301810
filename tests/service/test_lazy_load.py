"""The model is loaded only by a request that needs it, and once, however many arrive together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from handler.app import create_app
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]

COLD_PROCESS = r"""
import json, sys
model_path = sys.argv[1]
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and str(args[0]) == model_path else None)
import handler.lambda_handler as entry
from tests.helpers.lambda_events import FakeLambdaContext, lambda_event, lambda_body
after_import = "llama_cpp" in sys.modules
from fastapi.openapi.models import OpenAPI
openapi_built_at_import = OpenAPI.__pydantic_complete__
health = entry.handler(lambda_event("apigw-http-v2", "", path="/health", method="GET"), FakeLambdaContext())
after_health = "llama_cpp" in sys.modules
opens_before_chat = list(opened)
chat = entry.handler(lambda_event("apigw-http-v2", {"prompt": "hi", "max_tokens": 3}), FakeLambdaContext())
print(json.dumps({
    "after_import": after_import, "after_health": after_health, "opens_before_chat": opens_before_chat, "opens_after_chat": len(opened), "health": lambda_body(health), "chat_status": chat["statusCode"],
    "after_chat": "llama_cpp" in sys.modules, "boto3": "boto3" in sys.modules,
    "openapi_built_at_import": openapi_built_at_import,
    "openapi": lambda_body(entry.handler(lambda_event("apigw-http-v2", "", path="/openapi.json", method="GET"), FakeLambdaContext())),
}))
"""


def run_cold(settings: Settings, tmp_path: Path) -> dict:
    config = tmp_path / "config.yaml"
    config.write_text(f"model_path: {settings.model_path}\nn_ctx: 512\nn_gpu_layers: 0\ncache_dir: {tmp_path}/c\n")
    env = {**os.environ, "CHAT_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", COLD_PROCESS, settings.model_path],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_app_creation_and_health_neither_import_llama_cpp_nor_open_the_model(
    settings: Settings, tmp_path: Path
) -> None:
    result = run_cold(settings, tmp_path)
    assert result["after_import"] is False
    assert result["after_health"] is False
    assert result["opens_before_chat"] == []
    assert result["health"]["model"]["loaded"] is False
    assert result["chat_status"] == 200
    assert result["after_chat"] is True
    assert result["boto3"] is False  # a local model never imports boto3
    assert result["opens_after_chat"] >= 1  # the audit hook does see the model being opened


def test_fastapis_openapi_models_wait_for_openapi_json_and_give_the_same_schema(
    settings: Settings, tmp_path: Path
) -> None:
    result = run_cold(settings, tmp_path)
    assert result["openapi_built_at_import"] is False  # deferred: not paid by a cold start
    assert "/chat" in result["openapi"]["paths"]
    assert result["openapi"] == json.loads(json.dumps(create_app(settings).openapi()))


def test_concurrent_first_requests_load_the_model_exactly_once(settings: Settings) -> None:
    loads: list[float] = []

    def counting_loader(s: Settings):
        loads.append(time.monotonic())
        time.sleep(0.3)  # widen the window in which the other requests arrive
        return load_engine(s)

    app = create_app(settings, model=ModelHolder(settings, loader=counting_loader))
    results: list[httpx.Response] = []
    with LiveServer(app) as server:

        def call(i: int) -> None:
            results.append(httpx.post(f"{server.url}/chat", json={"prompt": f"p{i % 2}", "max_tokens": 5}, timeout=60))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(loads) == 1
    assert [r.status_code for r in results] == [200] * 8
    by_prompt: dict[str, set[str]] = {}
    for r in results:
        by_prompt.setdefault(r.request.content.decode(), set()).add(r.json()["text"])
    assert all(len(texts) == 1 for texts in by_prompt.values())


def test_health_does_not_load(app, http: httpx.Client) -> None:
    for _ in range(3):
        assert http.get("/health").json()["model"]["loaded"] is False
    assert app.state.model.loaded is False


def test_shutdown_under_uvicorn_frees_the_model_threads_and_the_disk_cache(settings: Settings) -> None:
    """The lifespan's exit, as uvicorn runs it (TestClient runs it the same way): nothing left open."""
    from fastapi.testclient import TestClient

    app = create_app(settings)
    with TestClient(app) as client:
        assert client.post("/chat", json={"prompt": "before shutdown", "max_tokens": 3}).status_code == 200
        disk = app.state.chat.cache.tier("disk")
        assert app.state.model.loaded and disk._cache is not None
    assert not app.state.model.loaded
    assert disk._cache is None
    with pytest.raises(RuntimeError):
        app.state.chat.flights._executor.submit(print)
