"""An s3:// model, with moto: downloaded once, verified, never used partial, reused, and retried after a failure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mangum import Mangum
from moto import mock_aws

from handler.app import create_app
from handler.core.config import ConfigError, load_settings
from handler.core.settings import Settings
from handler.engine.model import ModelHolder
from handler.engine.model_files.source import S3Source
from tests.conftest import FakeLambdaContext, lambda_body, lambda_event

BUCKET, KEY = "models-bucket", "gguf/tiny.gguf"
URI = f"s3://{BUCKET}/{KEY}"


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[object]:
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def s3_settings(settings: Settings, tiny_model: Path, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "model_path": URI,
            "model_sha256": hashlib.sha256(tiny_model.read_bytes()).hexdigest(),
            "model_download_dir": str(tmp_path / "models"),
        }
    )


def chat(app, prompt: str = "hi") -> dict:
    response = Mangum(app, lifespan="off")(
        lambda_event("apigw-http-v2", {"prompt": prompt, "max_tokens": 4}), FakeLambdaContext()
    )
    return {
        "status": response["statusCode"],
        "body": lambda_body(response),
        "x_cache": response["headers"].get("x-cache"),
    }


def files(folder: str) -> list[str]:
    return sorted(p.name for p in Path(folder).glob("*")) if Path(folder).exists() else []


class InterruptedClient:
    """A real (moto) S3 client whose download dies halfway: the fault injected."""

    def __init__(self, real) -> None:
        self.real = real

    def head_object(self, **kwargs):
        return self.real.head_object(**kwargs)

    def download_file(self, bucket: str, key: str, filename: str, Callback=None) -> None:  # noqa: N803
        body = self.real.get_object(Bucket=bucket, Key=key)["Body"].read()
        Path(filename).write_bytes(body[: len(body) // 2])
        raise ConnectionResetError("connection reset by peer")


def test_s3_model_is_downloaded_once_verified_and_answers(s3, s3_settings: Settings, tiny_model: Path) -> None:
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    app = create_app(s3_settings)
    assert files(s3_settings.model_download_dir) == []  # nothing fetched by app creation
    assert [chat(app, p)["status"] for p in ("one", "two")] == [200, 200]
    downloaded = files(s3_settings.model_download_dir)
    assert downloaded == [f"{s3_settings.model_sha256[:16]}-tiny.gguf"]
    assert (Path(s3_settings.model_download_dir) / downloaded[0]).read_bytes() == tiny_model.read_bytes()


def test_integrity_failure_is_503_keeps_nothing_and_is_retried(s3, s3_settings: Settings, tiny_model: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"GGUF" + b"\0" * 1000)  # the wrong content
    app = create_app(s3_settings)
    failed = chat(app)
    assert failed["status"] == 503 and failed["body"]["error"]["type"] == "model_unavailable"
    assert BUCKET not in str(failed["body"])
    assert files(s3_settings.model_download_dir) == []
    s3.upload_file(str(tiny_model), BUCKET, KEY)  # the operator fixes the object
    assert chat(app)["status"] == 200


def test_interrupted_download_leaves_no_usable_file_and_is_retried(s3, s3_settings: Settings, tiny_model: Path) -> None:
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    source = S3Source(URI, s3_settings.model_sha256, s3_settings.model_download_dir, client=InterruptedClient(s3))
    app = create_app(s3_settings, model=ModelHolder(s3_settings, source=source))
    assert chat(app)["status"] == 503
    assert files(s3_settings.model_download_dir) == []
    source._client = s3  # the network is back
    assert chat(app)["status"] == 200


def test_a_complete_file_is_reused_and_a_partial_one_never(s3, s3_settings: Settings, tiny_model: Path) -> None:
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    assert chat(create_app(s3_settings))["status"] == 200
    s3.delete_object(Bucket=BUCKET, Key=KEY)  # the next start cannot download: it must reuse
    reused = chat(create_app(s3_settings), "again")  # a new prompt: it needs the model
    assert reused["status"] == 200 and reused["x_cache"] == "MISS"

    folder = Path(s3_settings.model_download_dir)
    final = folder / f"{s3_settings.model_sha256[:16]}-tiny.gguf"
    final.rename(folder / (final.name + ".partial-4242"))  # what a killed start leaves
    assert chat(create_app(s3_settings), "third")["status"] == 503  # the partial file is not used
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    assert chat(create_app(s3_settings), "fourth")["status"] == 200
    assert files(str(folder)) == [final.name]  # the stale partial was cleared


def test_without_sha256_the_etag_names_the_file_and_keys_the_cache(
    s3, s3_settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    settings = s3_settings.model_copy(update={"model_sha256": None})
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    first = create_app(settings)
    assert chat(first)["x_cache"] == "MISS"
    assert chat(create_app(settings))["x_cache"] == "HIT-DISK"  # same object, same identity
    other = tmp_path / "other.gguf"
    from tests.tiny_gguf import write_tiny_gguf

    s3.upload_file(str(write_tiny_gguf(other, seed=5)), BUCKET, KEY)  # a new model under the same key
    replaced = create_app(settings)
    assert chat(replaced)["x_cache"] == "MISS"
    assert len(files(settings.model_download_dir)) == 2


def test_unreachable_bucket_is_503(s3, s3_settings: Settings) -> None:
    settings = s3_settings.model_copy(update={"model_path": "s3://no-such-bucket/m.gguf", "model_sha256": None})
    response = chat(create_app(settings))
    assert response["status"] == 503
    assert "no-such-bucket" not in str(response["body"])


@pytest.mark.parametrize("uri", ["s3://bucket-only", "https://example.com/m.gguf", "s3:///key"])
def test_bad_model_uri_is_a_config_error(tmp_path: Path, uri: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model_path: '{uri}'\n")
    with pytest.raises(ConfigError, match=r"model_path.*s3://bucket/key"):
        load_settings(config, environ={})


def test_s3_gone_while_running_changes_nothing_for_a_loaded_container(
    s3, s3_settings: Settings, tiny_model: Path
) -> None:
    """After the one download, S3 is never called again: a container keeps answering without it."""
    s3.upload_file(str(tiny_model), BUCKET, KEY)
    app = create_app(s3_settings)
    assert chat(app, "before")["status"] == 200
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    s3.delete_bucket(Bucket=BUCKET)  # S3 unreachable for this model from now on
    new_prompt = chat(app, "after")
    assert (new_prompt["status"], new_prompt["x_cache"]) == (200, "MISS")
    assert chat(app, "before")["x_cache"] == "HIT-MEMORY"
