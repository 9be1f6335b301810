"""Service settings: `config.yaml` as the base, environment variables on top.

Functions are configured through their environment, so every key of the file can be
overridden by `CHAT_<KEY>` (for example `CHAT_N_CTX=4096`), and the file itself is
found through `CHAT_CONFIG`. Everything is validated once, at start-up, and a bad
setting is reported as one message that names the file (or variable) and the field.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import ValidationError

from handler.core.settings import Settings

ENV_PREFIX = "CHAT_"
CONFIG_ENV = "CHAT_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file, apply `CHAT_*` overrides, validate; raise ConfigError on any problem."""
    environ = os.environ if environ is None else environ
    config_path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG).resolve()
    values = _read_file(config_path)
    origins = {key: f"{config_path}: field '{key}'" for key in values}
    overrides = _env_overrides(environ)
    notes = _unpin_overridden_model(values, overrides, config_path)
    for key, raw in overrides.items():
        values[key] = raw
        origins[key] = f"environment variable {ENV_PREFIX}{key.upper()}"
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_path, origins)) from None
    settings = _resolve_paths(settings, config_path.parent)
    settings._notes = notes
    return settings


def _unpin_overridden_model(values: dict[str, Any], overrides: dict[str, Any], config_path: Path) -> tuple[str, ...]:
    """A file's model_sha256 is the digest of the file's model_path: a model_path from the environment
    without a model_sha256 of its own is another file, served unpinned (its identity read from it)."""
    pinned = values.get("model_sha256")
    if not pinned or "model_path" not in overrides or "model_sha256" in overrides:
        return ()
    if overrides["model_path"] == values.get("model_path"):
        return ()
    del values["model_sha256"]
    return (
        f"{ENV_PREFIX}MODEL_PATH names another model than {config_path}'s model_path, so that file's "
        f"model_sha256 is not applied; set {ENV_PREFIX}MODEL_SHA256 to pin the served file to its digest.",
    )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} not found (set {CONFIG_ENV} to point at another one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must be a mapping of keys to values, not {type(data).__name__}")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`CHAT_<KEY>` values, parsed as YAML scalars or lists except for text fields."""
    overrides: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if field.annotation is str or get_origin(field.annotation) is Literal:
            overrides[name] = raw  # a word, never YAML's boolean: `off` is a value of `metrics`
        elif field.annotation == str | None:
            overrides[name] = raw or None  # an empty variable clears the file's value
        else:
            try:
                overrides[name] = None if raw == "" else yaml.safe_load(raw)
            except yaml.YAMLError:
                overrides[name] = raw  # let validation report it with the field's name
    return overrides


def _describe(exc: ValidationError, path: Path, origins: dict[str, str]) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        key = str(error["loc"][0]) if error["loc"] else "?"
        where = origins.get(key, f"{path}: field '{key}'")
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, Settings.model_fields, n=1)
            problems.append(f"{path}: unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        else:
            sub = "".join(f"[{part}]" for part in error["loc"][1:])
            problems.append(f"{where}{sub}: {error['msg']}")
    return "Invalid configuration: " + "; ".join(problems)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    updates: dict[str, Any] = {}
    if not _is_uri(settings.model_path) and not os.path.isabs(settings.model_path):
        updates["model_path"] = str(base / settings.model_path)
    adapters = {
        name: path if _is_uri(path) or os.path.isabs(path) else str(base / path)
        for name, path in settings.lora_adapters.items()
    }
    if adapters != settings.lora_adapters:
        updates["lora_adapters"] = adapters
    for key in ("cache_dir", "cache_seed_dir"):
        folder = getattr(settings, key)
        if not folder:
            updates[key] = None
        elif not os.path.isabs(folder):
            updates[key] = str(base / folder)
    return settings.model_copy(update=updates) if updates else settings


def _is_uri(path: str) -> bool:
    return "://" in path
