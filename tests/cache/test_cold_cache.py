"""A cold process answers a cached request without importing llama_cpp or opening the model,
from a cache filled ahead of time by the warm-up command and shipped as a seed folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from handler.core.settings import Settings
from handler.engine.model_files.digest import sha256_of

ROOT = Path(__file__).resolve().parents[2]

COLD_HIT = r"""
import json, sys
model_path = sys.argv[1]
opened = []
sys.addaudithook(lambda event, args: opened.append(1) if event == "open" and str(args[0]) == model_path else None)
import handler.lambda_handler as entry
from tests.helpers.lambda_events import FakeLambdaContext, lambda_event, lambda_body
response = entry.handler(lambda_event("function-url", {"prompt": sys.argv[2], "max_tokens": 8}), FakeLambdaContext())
print(json.dumps({"status": response["statusCode"], "x_cache": response["headers"].get("x-cache"),
                  "body": lambda_body(response), "llama_cpp": "llama_cpp" in sys.modules, "opens": len(opened)}))
"""


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_shipped_warm_cache_answers_a_cold_process_without_llama_cpp(
    settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_path: {tiny_model}\nmodel_sha256: {sha256_of(tiny_model, progress=False)}\n"
        f"n_ctx: 512\nn_gpu_layers: 0\nlog_level: WARNING\n"
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('What is the capital of France?\n{"prompt": "Tell me a rhyme", "max_tokens": 8}\n\n')
    build = {"CHAT_CONFIG": str(config), "CHAT_CACHE_DIR": str(tmp_path / "image-cache")}
    warmed = run(["-m", "handler.cli.warm_cache", str(prompts), "--max-tokens", "8"], build)
    assert "{'MISS': 2}" in warmed.stdout
    again = run(["-m", "handler.cli.warm_cache", str(prompts), "--max-tokens", "8"], build)
    assert "{'HIT-DISK': 2}" in again.stdout  # already cached: nothing generated

    runtime = {
        "CHAT_CONFIG": str(config),
        "CHAT_CACHE_DIR": str(tmp_path / "tmp-cache"),
        "CHAT_CACHE_SEED_DIR": str(tmp_path / "image-cache"),
    }
    cold = json.loads(run(["-c", COLD_HIT, str(tiny_model), "Tell me a rhyme"], runtime).stdout.splitlines()[-1])
    assert cold["status"] == 200 and cold["x_cache"] == "HIT-DISK"
    assert cold["llama_cpp"] is False and cold["opens"] == 0

    miss = json.loads(run(["-c", COLD_HIT, str(tiny_model), "Not warmed"], runtime).stdout.splitlines()[-1])
    assert miss["x_cache"] == "MISS" and miss["llama_cpp"] is True and miss["opens"] >= 1
