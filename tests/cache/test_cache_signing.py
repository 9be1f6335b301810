"""Signed entries: what the disk folder or the fleet's table hands back is served only when a configured
key vouches for it. The attack is a real one: an item with a valid shape, under a real key, written by
someone with PutItem on the table (any function role) or write access to the cache folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache
import pytest

from handler.app import create_app
from handler.cache.shared import ENTRY, KEY
from handler.cache.signing import PREFIX, EntrySigner
from handler.core.settings import Settings
from tests.cache.test_shared_cache import TABLE, Container, dynamodb, never_loads

__all__ = ["dynamodb"]  # the moto table fixture, shared with the table's own tests

OLD, NEW = "old-signing-key-" + "o" * 32, "new-signing-key-" + "n" * 32
TAMPERED = "TAMPERED: visit http://evil.example"


@contextmanager
def warnings_of(name: str) -> Iterator[list[str]]:
    """The warnings a logger of the service writes (they do not propagate to pytest's caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def tamper(raw: bytes, sign_with: str | None, key: str) -> bytes:
    """The entry's own bytes with another text, re-sealed with `sign_with` (None: no MAC at all)."""
    entry = raw.split(b"\n", 1)[1] if raw.startswith(PREFIX) else raw
    data = json.loads(entry)
    data["text"] = TAMPERED
    forged = json.dumps(data, separators=(",", ":")).encode()
    return forged if sign_with is None else EntrySigner([sign_with]).seal(key, forged)


@pytest.mark.parametrize("forgery", ["no MAC", "wrong key"])
def test_a_forged_table_item_is_never_served_and_counts_a_fault(
    dynamodb: Any, settings: Settings, tmp_path: Path, forgery: str
) -> None:
    keys = {"cache_signing_keys": [NEW]}
    _, _, honest = Container(settings, tmp_path, "a", **keys).chat("poison me")
    (item,) = dynamodb.scan(TableName=TABLE)["Items"]
    item[ENTRY]["B"] = tamper(
        item[ENTRY]["B"], None if forgery == "no MAC" else "attacker-key-" + "x" * 32, item[KEY]["S"]
    )
    dynamodb.put_item(TableName=TABLE, Item=item)

    fresh = Container(settings, tmp_path, "b", **keys)
    with warnings_of("handler.cache.shared") as warned:
        source, status, body = fresh.chat("poison me")
    assert (source, status) == ("MISS", 200)
    assert body == honest and TAMPERED not in json.dumps(body)
    assert fresh.shared.stats()["faults"] == 1
    assert warned == ["shared cache returned an entry no signing key vouches for; not served"]
    assert fresh.chat("poison me")[0] == "HIT-MEMORY"  # its own answer, never the forged one, was kept


def test_rotation_serves_the_previous_keys_entries_until_it_is_dropped(
    dynamodb: Any, settings: Settings, tmp_path: Path
) -> None:
    _, _, answer = Container(settings, tmp_path, "old", cache_signing_keys=[OLD]).chat("rotated")
    rotating = Container(settings, tmp_path, "rotating", loader=never_loads, cache_signing_keys=[NEW, OLD])
    assert rotating.chat("rotated") == ("HIT-SHARED", 200, answer)
    rotated = Container(settings, tmp_path, "rotated", cache_signing_keys=[NEW])
    assert rotated.chat("rotated")[0] == "MISS"  # the old key dropped: its entries are no longer trusted
    assert rotated.shared.stats()["faults"] == 1
    assert Container(settings, tmp_path, "next", loader=never_loads, cache_signing_keys=[NEW]).chat("rotated") == (
        "HIT-SHARED",
        200,
        answer,
    )  # the container that regenerated it wrote it signed with the new key


def test_a_forged_disk_entry_is_never_served_and_is_removed(settings: Settings, tmp_path: Path) -> None:
    signed = settings.model_copy(update={"cache_signing_keys": [NEW], "cache_dir": str(tmp_path / "cache")})
    first = create_app(signed)
    from fastapi.testclient import TestClient

    honest = TestClient(first).post("/chat", json={"prompt": "disk", "max_tokens": 6}).json()
    first.state.chat.close()
    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        (key,) = list(cache.iterkeys())
        cache.set(key, tamper(cache.get(key), None, key))

    second = create_app(signed)
    response = TestClient(second).post("/chat", json={"prompt": "disk", "max_tokens": 6})
    assert response.headers["x-cache"] == "MISS" and response.json() == honest
    disk = second.state.chat.cache.tier("disk")
    assert disk.stats()["faults"] == 1


def test_a_table_without_signing_keys_says_at_start_what_it_trusts(settings: Settings) -> None:
    with warnings_of("handler.cache.response_cache") as warned:
        create_app(settings.model_copy(update={"cache_table": TABLE}))
    assert len(warned) == 1 and "without cache_signing_keys" in warned[0]
    with warnings_of("handler.cache.response_cache") as warned:
        create_app(settings.model_copy(update={"cache_table": TABLE, "cache_signing_keys": [NEW]}))
    assert warned == []


def test_a_signed_entry_names_its_key() -> None:
    """The key is signed with the entry, so a valid entry moved under another key does not verify."""
    signer = EntrySigner([NEW])
    sealed = signer.seal("key-a", b'{"text":"x"}')
    assert signer.open("key-a", sealed) == b'{"text":"x"}'
    assert signer.open("key-b", sealed) is None
    assert EntrySigner([]).open("key-a", b"plain") == b"plain"
