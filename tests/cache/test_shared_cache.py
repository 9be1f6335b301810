"""The shared tier: a DynamoDB table (moto) that containers share; it helps, and never makes a request fail."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from mangum import Mangum
from moto import mock_aws

from handler.app import create_app
from handler.cache.entry import SCHEMA_VERSION
from handler.cache.shared import ENTRY, EXPIRES, KEY
from handler.core.errors import ModelUnavailable
from handler.core.settings import Settings
from handler.engine.model import ModelHolder, load_engine
from tests.conftest import FakeLambdaContext, WrappedEngine, lambda_body, lambda_event, replaced_result

TABLE = "chat-cache"


@pytest.fixture
def dynamodb(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
        )
        yield client


def never_loads(settings: Settings) -> Any:
    raise ModelUnavailable("this container must answer from the shared table")


class Container:
    """One function container: its own app, memory and /tmp disk; the table is the only thing shared."""

    def __init__(self, settings: Settings, tmp_path: Path, name: str, loader: Any = load_engine, **update: Any) -> None:
        self.settings = settings.model_copy(
            update={"cache_dir": str(tmp_path / name), "cache_table": TABLE, "cache_table_retry_seconds": 0, **update}
        )
        self.app = create_app(self.settings, model=ModelHolder(self.settings, loader=loader))
        self.handler = Mangum(self.app, lifespan="off")

    def chat(self, prompt: str, max_tokens: int = 8) -> tuple[str, int, Any]:
        response = self.handler(
            lambda_event("function-url", {"prompt": prompt, "max_tokens": max_tokens}), FakeLambdaContext()
        )
        return response["headers"].get("x-cache", ""), response["statusCode"], lambda_body(response)

    @property
    def shared(self) -> Any:
        return self.app.state.chat.cache.tier("shared")


def test_a_container_answers_from_the_table_what_another_generated(
    dynamodb: Any, settings: Settings, tmp_path: Path
) -> None:
    first = Container(settings, tmp_path, "a")
    second = Container(settings, tmp_path, "b", loader=never_loads)
    source_a, status_a, body_a = first.chat("shared question")
    source_b, status_b, body_b = second.chat("shared question")
    assert (source_a, status_a) == ("MISS", 200)
    assert (source_b, status_b, body_b) == ("HIT-SHARED", 200, body_a)
    assert second.app.state.model.loaded is False
    assert second.chat("shared question")[0] == "HIT-MEMORY"  # promoted
    assert second.app.state.chat.cache.tier("disk").stats()["entries"] == 1  # and on its disk too


def test_items_carry_the_entry_and_a_ttl_attribute(dynamodb: Any, settings: Settings, tmp_path: Path) -> None:
    Container(settings, tmp_path, "a", cache_table_ttl_seconds=3600).chat("ttl")
    Container(settings, tmp_path, "b", cache_ttl_seconds=120).chat("shorter ttl")
    items = dynamodb.scan(TableName=TABLE)["Items"]
    ttls = sorted(int(item[EXPIRES]["N"]) - time.time() for item in items)
    assert len(items) == 2
    assert 100 < ttls[0] <= 120 and 3500 < ttls[1] <= 3600  # cache_ttl_seconds wins when shorter


def test_config_changes_miss_the_table_as_they_miss_the_local_tiers(
    dynamodb: Any, settings: Settings, tmp_path: Path
) -> None:
    Container(settings, tmp_path, "a").chat("keyed")
    assert Container(settings, tmp_path, "b", system_prompt="Be terse.").chat("keyed")[0] == "MISS"
    assert Container(settings, tmp_path, "c", temperature=0.5).chat("keyed")[0] == "MISS"
    assert Container(settings, tmp_path, "d").chat("keyed", max_tokens=9)[0] == "MISS"
    assert Container(settings, tmp_path, "e").chat("keyed")[0] == "HIT-SHARED"  # the control


@pytest.mark.parametrize("damage", ["old schema", "other key", "not json", "expired"])
def test_a_bad_item_is_never_served(dynamodb: Any, settings: Settings, tmp_path: Path, damage: str) -> None:
    Container(settings, tmp_path, "a").chat("damaged")
    (item,) = dynamodb.scan(TableName=TABLE)["Items"]
    raw = item[ENTRY]["B"]
    item[ENTRY]["B"] = {
        "old schema": raw.replace(f'"v":{SCHEMA_VERSION}'.encode(), b'"v":0'),
        "other key": raw.replace(item[KEY]["S"].encode(), b"0" * 64),
        "not json": b"\x00garbage",
        "expired": raw,
    }[damage]
    if damage == "expired":  # DynamoDB deletes expired items lazily: they must not be served meanwhile
        item[EXPIRES]["N"] = str(int(time.time()) - 1)
    dynamodb.put_item(TableName=TABLE, Item=item)
    source, status, _ = Container(settings, tmp_path, "b").chat("damaged")
    assert (source, status) == ("MISS", 200)


class Bloated(WrappedEngine):
    """The real engine's answer, made larger than a DynamoDB item may be: the fault injected."""

    def submit(self, tokens: list[int], params: Any, **kwargs: Any) -> Any:
        return replaced_result(super().submit(tokens, params, **kwargs), lambda g: replace(g, text="x" * 450_000))


def test_an_answer_over_the_item_limit_is_kept_locally_and_skipped_with_a_log_line(
    dynamodb: Any, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    container = Container(settings, tmp_path, "a", loader=lambda s: Bloated(load_engine(s)))
    with caplog.at_level(logging.INFO, logger="handler.cache.shared"):
        source, status, body = container.chat("big")
    assert (source, status, len(body["text"])) == ("MISS", 200, 450_000)
    assert dynamodb.scan(TableName=TABLE)["Count"] == 0
    assert container.shared.skipped_oversize == 1
    assert any("too large" in r.getMessage() for r in caplog.records)
    assert container.chat("big")[0] == "HIT-MEMORY"


def test_a_missing_table_degrades_to_the_local_tiers(
    aws_credentials: None, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with mock_aws():  # no table created
        container = Container(settings, tmp_path, "a")
        reference = Container(settings.model_copy(update={"cache_table": None}), tmp_path, "ref")
        with caplog.at_level(logging.WARNING, logger="handler.cache.shared"):
            source, status, body = container.chat("no table")
        assert (source, status, body) == ("MISS", 200, reference.chat("no table")[2])
        assert container.chat("no table")[0] == "HIT-MEMORY"
        assert container.shared.outage.degraded and container.shared.outage.faults >= 1
        assert any("shared cache" in r.getMessage() for r in caplog.records)


def test_a_throttled_table_degrades_then_recovers(dynamodb: Any, settings: Settings, tmp_path: Path) -> None:
    container = Container(settings, tmp_path, "a")
    client = container.shared._connect()
    with Stubber(client) as stub:
        for operation in ("get_item", "put_item"):
            for _ in range(4):
                stub.add_client_error(
                    operation, service_error_code="ProvisionedThroughputExceededException", http_status_code=400
                )
        source, status, _ = container.chat("throttled")
    assert (source, status) == ("MISS", 200)
    assert container.shared.outage.degraded
    container.chat("after the throttling")  # the table is tried again (retry_seconds is 0 here) and works
    assert not container.shared.outage.degraded
    assert Container(settings, tmp_path, "b", loader=never_loads).chat("after the throttling")[0] == "HIT-SHARED"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a table that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_table_that_hangs_costs_a_bounded_wait_and_the_answer_is_right(
    aws_credentials: None, settings: Settings, tmp_path: Path, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", silent_endpoint)
    container = Container(
        settings,
        tmp_path,
        "a",
        cache_table_timeout_seconds=0.2,
        cache_table_max_attempts=1,
        cache_table_retry_seconds=60,
    )
    reference = Container(settings.model_copy(update={"cache_table": None}), tmp_path, "ref")
    assert container.chat("hang") == ("MISS", 200, reference.chat("hang")[2])
    assert container.shared.outage.degraded
    assert container.chat("hang again")[1] == 200  # the table is left alone meanwhile
    assert container.shared.outage.faults == 1


def test_a_table_without_a_region_is_a_tier_fault_then_serves_once_reachable(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore raises NoRegionError when the client is made: that is the table's fault, never the request's."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        writer = Container(settings, tmp_path, "a")
        with caplog.at_level(logging.WARNING, logger="handler.cache.shared"):
            source, status, body = writer.chat("no region")
        assert (source, status) == ("MISS", 200)
        assert writer.shared.outage.degraded
        assert any("NoRegionError" in str(getattr(r, "error", "")) for r in caplog.records)

        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the region arrives (configuration fixed)
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
        )
        assert writer.chat("now stored in the table")[:2] == ("MISS", 200)
        assert not writer.shared.outage.degraded
        reader = Container(settings, tmp_path, "b", loader=never_loads)
        assert reader.chat("now stored in the table")[0] == "HIT-SHARED"
        assert body == Container(settings, tmp_path, "c").chat("no region")[2]


def test_warm_cache_counts_a_table_hit_as_success(
    dynamodb: Any,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from handler.cli import warm_cache

    Container(settings, tmp_path, "a").chat("warm me")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_path: {settings.model_path}\nn_ctx: {settings.n_ctx}\nn_gpu_layers: 0\n"
        f"log_level: WARNING\ncache_table: {TABLE}\ncache_dir: {tmp_path / 'build'}\n"
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("warm me\n")
    monkeypatch.setenv("CHAT_CONFIG", str(config))
    assert warm_cache.main([str(prompts), "--max-tokens", "8"]) == 0
    assert "{'HIT-SHARED': 1}" in capsys.readouterr().out
