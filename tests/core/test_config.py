"""Config: the file as base, CHAT_* on top, one clear message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.core.config import DEFAULT_CONFIG, ConfigError, load_settings
from handler.core.settings import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_repository_config_is_valid_and_carries_the_design_defaults() -> None:
    settings = load_settings(DEFAULT_CONFIG, environ={})
    assert settings.system_prompt == "Answer in rhymes!"
    assert settings.prompt_template == "System: {system_prompt}\n\nHuman: {prompt}\n\nAssistant:"
    assert settings.stop == ["Human:"]
    assert (settings.n_gpu_layers, settings.n_ctx, settings.n_batch, settings.n_parallel) == (50, 4096, 512, 8)
    assert settings.model_path == str(DEFAULT_CONFIG.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_environment_overrides_file_and_config_path(tmp_path: Path) -> None:
    path = write(tmp_path, "n_ctx: 1024\nsystem_prompt: Be brief.\nmodel_sha256: " + "a" * 64 + "\n")
    env = {
        "CHAT_CONFIG": str(path),
        "CHAT_N_CTX": "4096",
        "CHAT_STOP": '["###", "Human:"]',
        "CHAT_SYSTEM_PROMPT": "123",
        "CHAT_CACHE_DIR": "",
        "CHAT_MODEL_SHA256": "",
        "CHAT_CACHE_TTL_SECONDS": "60",
    }
    settings = load_settings(environ=env)
    assert settings.n_ctx == 4096
    assert settings.stop == ["###", "Human:"]
    assert settings.system_prompt == "123"  # text fields stay text
    assert settings.cache_dir is None
    assert settings.model_sha256 is None  # an empty variable clears the file's value
    assert settings.cache_ttl_seconds == 60


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "model_path: m/x.gguf\ncache_dir: c\n"), environ={})
    assert settings.model_path == str(tmp_path / "m" / "x.gguf")
    assert settings.cache_dir == str(tmp_path / "c")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("n_ctx: [1\n", {}, "is not valid YAML"),
        ("- a\n- b\n", {}, "must be a mapping"),
        ("n_ctxx: 10\n", {}, "unknown key 'n_ctxx' (did you mean 'n_ctx'?)"),
        ("n_ctx: lots\n", {}, "field 'n_ctx': Input should be a valid integer"),
        (
            "n_batch: 512\n",
            {"CHAT_N_BATCH": "many"},
            "environment variable CHAT_N_BATCH: Input should be a valid integer",
        ),
        (
            "prompt_template: 'System: {system_prompt}'\n",
            {},
            "field 'prompt_template': Value error, must contain {prompt}",
        ),
        ("prompt_template: '{prompt} {user}'\n", {}, "unknown placeholder(s) ['user']"),
        ("stop: ['']\n", {}, "stop strings must not be empty"),
        ("temperature: 9\n", {}, "field 'temperature': Input should be less than or equal to 2"),
    ],
)
def test_bad_config_is_one_clear_message_naming_file_and_field(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env)
    message = str(info.value)
    assert expected in message
    if "environment" not in expected:
        assert str(path) in message


def test_missing_config_file_says_how_to_point_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found \(set CHAT_CONFIG"):
        load_settings(environ={"CHAT_CONFIG": str(tmp_path / "nope.yaml")})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), environ={}).n_ctx == Settings().n_ctx


def test_metrics_off_is_a_word_in_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "metrics: off\nmodel_sha256: null\n")
    assert load_settings(path, environ={}).metrics == "off"
    assert load_settings(path, environ={"CHAT_METRICS": "off"}).metrics == "off"


def test_a_model_path_from_the_environment_leaves_the_files_pin_behind(tmp_path: Path) -> None:
    """config.yaml's model_sha256 is the digest of its own model_path's file, not of another one."""
    pin = "a" * 64
    path = write(tmp_path, f"model_path: default.gguf\nmodel_sha256: {pin}\n")
    other = load_settings(path, environ={"CHAT_MODEL_PATH": "/data/other.gguf"})
    assert other.model_sha256 is None
    assert len(other.notes) == 1 and "CHAT_MODEL_SHA256" in other.notes[0]
    pinned = load_settings(path, environ={"CHAT_MODEL_PATH": "/data/other.gguf", "CHAT_MODEL_SHA256": "b" * 64})
    assert pinned.model_sha256 == "b" * 64 and pinned.notes == ()
    same = load_settings(path, environ={"CHAT_MODEL_PATH": "default.gguf"})
    assert same.model_sha256 == pin and same.notes == ()
    assert load_settings(path, environ={}).model_sha256 == pin


def test_the_default_config_serves_another_gguf_from_the_environment(tiny_model: Path, tmp_path: Path) -> None:
    """The README's `CHAT_MODEL_PATH=... make serve`: answered, not a 503 model_mismatch."""
    from fastapi.testclient import TestClient

    from handler.app import create_app

    env = {"CHAT_MODEL_PATH": str(tiny_model), "CHAT_CACHE_DIR": str(tmp_path / "cache"), "CHAT_N_CTX": "512"}
    client = TestClient(create_app(load_settings(DEFAULT_CONFIG, environ=env)))
    assert client.post("/chat", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
