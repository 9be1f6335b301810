"""The cache key names the model that really answers: a model replaced at its path, a model that differs
anywhere in its content, and a declared sha256 that the file does not match. Real files, real renames,
real restarts of the app on one cache directory, and the fleet's shared table (moto)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from handler.app import create_app
from handler.cache.shared import KEY
from handler.core.settings import Settings
from tests.tiny_gguf import write_tiny_gguf

TABLE = "chat-cache"


@pytest.fixture
def table(aws_credentials: None) -> Iterator[None]:
    with mock_aws():
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
        )
        yield


class Server:
    """One start of the service: its own process state; the cache folder (and table) outlive it."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.client = TestClient(self.app)

    def ask(self, prompt: str, **headers: str) -> tuple[str, str]:
        response = self.client.post("/chat", json={"prompt": prompt, "max_tokens": 12}, headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["x-cache"], response.json()["text"]

    @property
    def loaded(self) -> bool:
        return bool(self.app.state.model.loaded)


def replace_by_rename(target: Path, new_content: Path) -> None:
    aside = target.with_name(target.name + ".new")
    shutil.copyfile(new_content, aside)
    os.replace(aside, target)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "library"
    folder.mkdir()
    return {"A": write_tiny_gguf(folder / "a.gguf", seed=0), "B": write_tiny_gguf(folder / "b.gguf", seed=5)}


@pytest.mark.parametrize("shared_table", [False, True])
def test_a_model_replaced_by_rename_never_answers_for_the_old_one(
    settings: Settings, tmp_path: Path, models: dict[str, Path], shared_table: bool, request: pytest.FixtureRequest
) -> None:
    if shared_table:
        request.getfixturevalue("table")
    served = tmp_path / "serve" / "model.gguf"
    served.parent.mkdir()
    shutil.copyfile(models["A"], served)
    common = {"model_path": str(served), "cache_dir": str(tmp_path / "cache")}
    if shared_table:
        common["cache_table"] = TABLE
    run = settings.model_copy(update=common)
    truth = {
        name: Server(settings.model_copy(update={"model_path": str(path), "cache_dir": None}))
        for name, path in models.items()
    }

    assert Server(run).ask("P")[0] == "MISS"
    second = Server(run)  # a restart: identity from the file, answer from the disk, model not loaded
    assert second.ask("P")[0] == "HIT-DISK" and not second.loaded
    replace_by_rename(served, models["B"])
    source, text = second.ask("Q")
    assert (source, text) == ("MISS", truth["B"].ask("Q")[1])

    replace_by_rename(served, models["A"])  # back to A, and a restart
    source, text = Server(run).ask("Q")
    assert (source, text) == ("MISS", truth["A"].ask("Q")[1])


def test_a_loaded_model_replaced_at_its_path_is_reloaded(
    settings: Settings, tmp_path: Path, models: dict[str, Path]
) -> None:
    served = tmp_path / "model.gguf"
    shutil.copyfile(models["A"], served)
    server = Server(settings.model_copy(update={"model_path": str(served)}))
    truth_b = Server(settings.model_copy(update={"model_path": str(models["B"]), "cache_dir": None}))
    server.ask("before")
    replace_by_rename(served, models["B"])
    assert server.ask("after", **{"Cache-Control": "no-cache"}) == ("MISS", truth_b.ask("after")[1])
    assert server.app.state.model.identity == f"sha256:{hashlib.sha256(models['B'].read_bytes()).hexdigest()}"


def test_models_that_differ_anywhere_have_different_identities(settings: Settings, tmp_path: Path) -> None:
    """A fine-tune that changes some layers of a same-size model: the whole content is the identity, not
    samples of it (three 1 MiB samples and the size used to be, and they collided)."""
    base = write_tiny_gguf(tmp_path / "base.gguf", feed_forward=4096)
    data = bytearray(base.read_bytes())
    assert len(data) > 5 * 1024 * 1024
    start = 3 * 1024 * 1024 // 2  # between the first and the middle sample
    weights = memoryview(data)[start : start + 512 * 1024].cast("f")
    for i in range(len(weights)):
        weights[i] = -weights[i]
    tuned = tmp_path / "tuned.gguf"
    tuned.write_bytes(bytes(data))
    assert tuned.stat().st_size == base.stat().st_size

    served = tmp_path / "served.gguf"
    shutil.copyfile(base, served)
    run = settings.model_copy(update={"model_path": str(served)})
    assert Server(run).ask("same prompt")[0] == "MISS"
    replace_by_rename(served, tuned)
    assert Server(run).ask("same prompt")[0] == "MISS"


def test_a_declared_sha256_the_file_does_not_match_stores_nothing(
    settings: Settings, tmp_path: Path, models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    declared = hashlib.sha256(models["A"].read_bytes()).hexdigest()
    served = tmp_path / "model.gguf"
    shutil.copyfile(models["B"], served)
    run = settings.model_copy(update={"model_path": str(served), "model_sha256": declared})
    server = Server(run)
    with caplog.at_level(logging.ERROR, logger="handler.errors"):
        response = server.client.post("/chat", json={"prompt": "P", "max_tokens": 12})
    assert response.status_code == 503
    assert any("model_sha256" in str(record.getMessage()) for record in caplog.records)
    assert response.json()["error"]["type"] == "model_mismatch"
    assert not server.loaded
    assert server.app.state.chat.cache.tier("disk").stats()["entries"] == 0

    replace_by_rename(served, models["A"])  # the right file arrives: no restart needed
    truth_a = Server(settings.model_copy(update={"model_path": str(models["A"]), "cache_dir": None}))
    assert server.ask("P") == ("MISS", truth_a.ask("P")[1])


def test_a_cold_hit_reads_a_sidecar_digest_not_the_model(settings: Settings, tmp_path: Path) -> Any:
    model = write_tiny_gguf(tmp_path / "m.gguf")
    run = settings.model_copy(update={"model_path": str(model)})
    Server(run).ask("warm")
    sidecar = Path(str(model) + ".sha256.json")
    assert sidecar.is_file()  # remembered beside the model after the one full read
    shutil.rmtree(Path(run.model_download_dir) / "digests", ignore_errors=True)
    reads: list[str] = []
    import sys

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and str(args[0]) == str(model):
            reads.append(event)

    sys.addaudithook(audit)
    assert Server(run).ask("warm")[0] == "HIT-DISK"
    assert reads == []


def test_work_on_a_replaced_model_finishes_before_its_engine_is_freed(
    settings: Settings, tmp_path: Path, models: dict[str, Path]
) -> None:
    """A reload retires the old engine only once its last caller has its answer: a generation running on it
    and embeddings queued on it complete."""
    from concurrent.futures import ThreadPoolExecutor

    from handler.core.types import ModelInput
    from handler.engine.model import ModelHolder, load_engine
    from tests.conftest import PacedEngine

    served = tmp_path / "model.gguf"
    shutil.copyfile(models["A"], served)
    run = settings.model_copy(update={"model_path": str(served)})
    engines: list[PacedEngine] = []

    def loader(s: Any) -> PacedEngine:
        engines.append(PacedEngine(load_engine(s), per_token_s=0.01))
        return engines[-1]

    holder = ModelHolder(run, loader=loader)
    params = run.sampling_params(60)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(holder.generate, ModelInput.text("a long story"), params)
        embeddings = pool.submit(holder.embed, [f"text {i}" for i in range(200)])
        while not engines or engines[0].tokens == 0:  # the generation has started on the first engine
            time.sleep(0.01)
        replace_by_rename(served, models["B"])
        holder.tokenize("reload", add_special=False, parse_special=True)  # loads B, retires A
        assert len(engines) == 2
        assert long.result().completion_tokens > 0
        assert len(embeddings.result()) == 200
    holder.close()
