"""Optional API keys: off by default; on, /chat needs a key and /health stays open."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import httpx
import pytest
from fastapi import FastAPI
from moto import mock_aws

from handler.app import create_app
from handler.core.config import ConfigError, load_settings
from handler.core.errors import ServiceUnavailable
from handler.core.settings import Settings

KEY, OTHER = "k" * 20 + "-first", "o" * 20 + "-second"


@pytest.fixture
def keyed(settings: Settings, live_server) -> httpx.Client:
    app = create_app(settings.model_copy(update={"api_keys": [KEY, OTHER]}))
    return httpx.Client(base_url=live_server(app).url, timeout=30)


def test_auth_off_by_default(http: httpx.Client) -> None:
    assert http.post("/chat", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-wrong-key"},
        {"Authorization": f"Basic {KEY}"},
        {"X-API-Key": KEY[:-1]},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "not-bearer", "truncated", "empty"],
)
def test_without_a_valid_key_chat_is_401(keyed: httpx.Client, headers: dict[str, str]) -> None:
    response = keyed.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"
    assert KEY not in response.text


def test_malformed_body_without_a_key_is_401_not_422(keyed: httpx.Client) -> None:
    response = keyed.post("/chat", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": OTHER}])
def test_a_valid_key_passes_and_health_stays_open(keyed: httpx.Client, headers: dict[str, str]) -> None:
    assert keyed.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers=headers).status_code == 200
    assert keyed.get("/health").status_code == 200


def test_keys_from_the_environment(tmp_path, monkeypatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    settings = load_settings(config, environ={"CHAT_API_KEYS": json.dumps([KEY])})
    assert settings.api_keys == [KEY]
    with pytest.raises(ConfigError, match=r"CHAT_API_KEYS.*at least 16 characters"):
        load_settings(config, environ={"CHAT_API_KEYS": '["short"]'})


@pytest.fixture
def secrets(aws_credentials: None) -> Iterator[object]:
    with mock_aws():
        yield boto3.client("secretsmanager")


def test_keys_from_an_aws_secret_and_recovery_when_it_appears(settings: Settings, secrets, live_server) -> None:
    app: FastAPI = create_app(settings.model_copy(update={"api_keys_secret_id": "chat/api-keys"}))
    with httpx.Client(base_url=live_server(app).url, timeout=30) as http:
        missing = http.post("/chat", json={"prompt": "hi"}, headers={"X-API-Key": KEY})
        assert missing.status_code == 503 and "chat/api-keys" not in missing.text
        secrets.create_secret(Name="chat/api-keys", SecretString=json.dumps([KEY]))
        assert http.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers={"X-API-Key": KEY}).status_code == 200
        assert http.post("/chat", json={"prompt": "hi"}, headers={"X-API-Key": OTHER}).status_code == 401


FULL_HEALTH = {"status", "model", "engine", "cache"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"X-API-Key": KEY[:-1]}],
    ids=["none", "wrong", "truncated"],
)
def test_health_without_a_valid_key_tells_only_the_status(keyed: httpx.Client, headers: dict[str, str]) -> None:
    keyed.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers={"X-API-Key": KEY})  # a generation to count
    response = keyed.get("/health", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "tiny" not in response.text and "generations" not in response.text


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": OTHER}])
def test_health_with_a_valid_key_tells_everything(keyed: httpx.Client, headers: dict[str, str]) -> None:
    keyed.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers=headers)
    body = keyed.get("/health", headers=headers).json()
    assert set(body) == FULL_HEALTH and body["status"] == "ok"
    assert body["model"]["file"] == "tiny.gguf" and body["model"]["generations"] == 1


def test_health_tells_everything_when_no_keys_are_configured(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert set(body) == FULL_HEALTH and body["model"]["file"] == "tiny.gguf"


def test_health_without_a_key_says_degraded_and_never_reads_the_secret(
    settings: Settings, tmp_path, live_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    def unreadable_secret(keys: object) -> None:
        reads.append("read")
        raise ServiceUnavailable("no secret here")

    monkeypatch.setattr("handler.middleware.auth.ApiKeys._load_secret", unreadable_secret)
    missing_model = str(tmp_path / "absent.gguf")
    app = create_app(settings.model_copy(update={"model_path": missing_model, "api_keys_secret_id": "chat/keys"}))
    with httpx.Client(base_url=live_server(app).url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "degraded"}
        assert reads == []  # a probe without a key costs no secret read
        # a key that cannot be checked now (the secret unreadable) sees the status only, and no 503
        response = http.get("/health", headers={"X-API-Key": KEY})
        assert response.status_code == 200 and response.json() == {"status": "degraded"}
        assert reads == ["read"]
