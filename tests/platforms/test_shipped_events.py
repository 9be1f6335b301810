"""The event files shipped in tests/events/, unchanged, are real /chat requests: what `sam local invoke -e`
sends (the README's example, and the sample samconfig's local_invoke event) gets an answer from the
Lambda entry point, not a 422."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EVENTS
from tests.platforms.test_deploy_files import tool

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["apigw-http-v2", "function-url", "apigw-rest-v1", "alb"]

# Run in a process of its own: the entry point builds its app from config.yaml and the environment at import.
INVOKE = """
import json, sys
from handler.lambda_handler import handler
from tests.helpers.lambda_events import FakeLambdaContext
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        out[path] = handler(json.load(f), FakeLambdaContext())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def answers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA_")},
        "PYTHONPATH": str(ROOT),
        "CHAT_MODEL_PATH": str(tiny_model),
        "CHAT_MODEL_SHA256": "",  # clears the repository config's, which names the default model
        "CHAT_N_CTX": "512",
        "CHAT_N_THREADS": "1",
        "CHAT_MAX_TOKENS_DEFAULT": "8",
        "CHAT_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "CHAT_LOG_LEVEL": "WARNING",
    }
    paths = [str(EVENTS / f"{kind}.json") for kind in KINDS]
    out = subprocess.run(
        [sys.executable, "-c", INVOKE, *paths], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    answers = json.loads(out.stdout.strip().splitlines()[-1])
    return {kind: answers[path] for kind, path in zip(KINDS, paths, strict=True)}


@pytest.mark.parametrize("kind", KINDS)
def test_each_shipped_event_is_a_chat_request(kind: str) -> None:
    event = json.loads((EVENTS / f"{kind}.json").read_text())
    body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
    assert json.loads(body) == {"prompt": "What is the capital of France?"}
    headers = {name.lower(): value for name, value in event["headers"].items()}
    assert headers["content-type"] == "application/json"
    if "multiValueHeaders" in event:
        assert {name.lower(): v for name, v in event["multiValueHeaders"].items()}["content-type"] == [
            "application/json"
        ]
    if "version" in event:
        assert (event["rawPath"], event["requestContext"]["http"]["method"]) == ("/chat", "POST")
    else:
        assert (event["path"], event["httpMethod"]) == ("/chat", "POST")


@pytest.mark.parametrize("kind", KINDS)
def test_the_entry_point_answers_each_shipped_event_unchanged(kind: str, answers: dict[str, dict]) -> None:
    response = answers[kind]
    body = base64.b64decode(response["body"]).decode() if response.get("isBase64Encoded") else response["body"]
    assert response["statusCode"] == 200, body
    assert isinstance(json.loads(body)["text"], str)  # /chat's answer
    headers = {name.lower(): values[-1] for name, values in (response.get("multiValueHeaders") or {}).items()}
    headers.update({name.lower(): value for name, value in (response.get("headers") or {}).items()})
    assert headers["x-finish-reason"] in {"stop", "length"}  # a replayed gateway event is not out of time


@pytest.mark.deploy
def test_the_shipped_events_are_what_the_script_writes(tmp_path: Path) -> None:
    """infra/generate-events.sh, run with the pinned sam, writes exactly the shipped files."""
    (tmp_path / "infra").mkdir()
    (tmp_path / "tests" / "events").mkdir(parents=True)
    shutil.copy(ROOT / "infra" / "generate-events.sh", tmp_path / "infra")
    env = {**os.environ, "SAM": tool("sam"), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(tmp_path / "infra" / "generate-events.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for kind in KINDS:
        written = (tmp_path / "tests" / "events" / f"{kind}.json").read_text()
        assert written == (EVENTS / f"{kind}.json").read_text(), kind
