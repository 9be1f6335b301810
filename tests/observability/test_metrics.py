"""Metrics: Prometheus /metrics under uvicorn, CloudWatch EMF in the log line as a function; and the
facts of each request in its log line (model load time, tokens per second)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from mangum import Mangum
from prometheus_client.parser import text_string_to_metric_families

from handler.app import create_app
from handler.core.settings import Settings
from handler.observability.metrics import NAMESPACE
from tests.conftest import FakeLambdaContext, LiveServer, lambda_event, lines


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_metrics_count_what_happened(settings: Settings, access_log: io.StringIO) -> None:
    with LiveServer(create_app(settings.model_copy(update={"metrics": "prometheus"}))) as server:
        for _ in range(2):
            httpx.post(f"{server.url}/chat", json={"prompt": "count me", "max_tokens": 5})
        httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "raw", "max_tokens": 4})
        httpx.post(f"{server.url}/chat", json={"prompt": ""})
        response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    miss = (("cache", "MISS"), ("route", "/chat"), ("status", "200"))
    assert got[("chat_requests_total", miss)] == 1
    assert got[("chat_requests_total", (("cache", "HIT-MEMORY"), ("route", "/chat"), ("status", "200")))] == 1
    assert got[("chat_requests_total", (("cache", "MISS"), ("route", "/v1/completions"), ("status", "200")))] == 1
    assert got[("chat_requests_total", (("cache", "ERROR"), ("route", "/chat"), ("status", "422")))] == 1
    assert got[("chat_request_latency_seconds_count", (("cache", "MISS"), ("route", "/chat")))] == 1
    assert got[("chat_cache_hits_total", (("tier", "memory"),))] == 1
    assert got[("chat_cache_misses_total", ())] == 2
    assert got[("chat_generations_total", ())] == 2
    assert got[("chat_model_loaded", ())] == 1
    logged = [line for line in lines(access_log) if line.get("cache") == "MISS"]
    assert got[("chat_tokens_total", (("kind", "completion"),))] == sum(line["completion_tokens"] for line in logged)


def test_metrics_and_health_show_the_same_engine_gauges(settings: Settings) -> None:
    with LiveServer(create_app(settings.model_copy(update={"metrics": "prometheus"}))) as server:
        before = samples(httpx.get(f"{server.url}/metrics").text)
        assert httpx.get(f"{server.url}/health").json()["engine"] is None
        assert not any(name.startswith("chat_engine_") for name, _ in before)  # nothing loaded, nothing to show
        shared = "a question that shares its opening words with the next one, " * 4
        for ending in ("first", "second"):
            body = {"model": "tiny", "prompt": shared + ending, "max_tokens": 3}
            assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 200
        got = samples(httpx.get(f"{server.url}/metrics").text)
        engine = httpx.get(f"{server.url}/health").json()["engine"]
    assert engine["running"] == 0 and engine["waiting"] == 0 and engine["kv_cells_reserved"] == 0
    assert engine["kv_cells"] >= settings.n_ctx and engine["slots"] == settings.n_parallel
    assert engine["prompt_tokens_reused"] > 10  # the second prompt reused the first one's prefix
    assert got[("chat_engine_prompt_tokens_reused_total", ())] == engine["prompt_tokens_reused"]
    assert got[("chat_engine_kv_cells", ())] == engine["kv_cells"]
    assert got[("chat_engine_kv_cells_cached", ())] == engine["kv_cells_cached"] > 0
    assert got[("chat_engine_sequences_running", ())] == 0


def test_the_engine_metrics_move_while_a_generation_runs(settings: Settings) -> None:
    """Read during a streamed generation: one sequence running, its cells in use; after it, its first
    token and the tokens after it are in the latency histograms."""
    app = create_app(settings.model_copy(update={"metrics": "prometheus", "speculative_draft_max": 0}))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        body = {"model": "tiny", "prompt": "a long story", "max_tokens": 200, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # the first piece is out
            during = samples(http.get("/metrics").text)
            for _ in lines:
                pass
        after = samples(http.get("/metrics").text)
    assert during[("chat_engine_sequences_running", ())] == 1
    assert during[("chat_engine_kv_cache_usage_ratio", ())] > 0
    assert after[("chat_engine_sequences_running", ())] == 0
    assert after[("chat_engine_time_to_first_token_seconds_count", ())] == 1
    assert after[("chat_engine_inter_token_latency_seconds_count", ())] >= 100
    assert after[("chat_engine_prompt_tokens_total", ())] >= 3


def test_the_request_line_says_when_the_model_loaded_and_how_fast_it_generated(
    settings: Settings, access_log: io.StringIO
) -> None:
    with LiveServer(create_app(settings)) as server:
        for prompt in ("first", "second", "second"):
            httpx.post(f"{server.url}/chat", json={"prompt": prompt, "max_tokens": 5})
    first, second, hit = lines(access_log)
    assert first["model_load_s"] > 0 and "model_load_s" not in second and "model_load_s" not in hit
    assert first["tokens_per_second"] > 0 and second["tokens_per_second"] > 0
    assert second["tokens_per_second"] == pytest.approx(second["completion_tokens"] / second["generation_s"], rel=0.01)
    assert "tokens_per_second" not in hit  # a hit generated nothing


def emf_lines(settings: Settings, access_log: io.StringIO, prompts: list[str]) -> list[dict[str, Any]]:
    handler = Mangum(create_app(settings.model_copy(update={"metrics": "emf"})), lifespan="off")
    for prompt in prompts:
        handler(lambda_event("function-url", {"prompt": prompt, "max_tokens": 4}), FakeLambdaContext())
    handler(lambda_event("function-url", "", path="/health", method="GET"), FakeLambdaContext())
    return lines(access_log)


def test_as_a_function_each_answer_line_is_a_cloudwatch_emf_record(settings: Settings, access_log: io.StringIO) -> None:
    miss, hit, health = emf_lines(settings, access_log, ["emf", "emf"])
    for line in (miss, hit):
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE
        assert isinstance(line["_aws"]["Timestamp"], int)
        for dimension_set in directive["Dimensions"]:
            assert all(isinstance(line[name], str) for name in dimension_set)
        for metric in directive["Metrics"]:  # EMF: each metric's value is the top-level key of its name
            assert isinstance(line[metric["Name"]], int | float), metric
            assert line[metric["Name"]] == line[_field(metric["Name"])]
    names = {m["Name"] for m in miss["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"Latency", "PromptTokens", "CompletionTokens", "TokensPerSecond", "ModelLoadTime"} <= names
    assert (miss["Cache"], hit["Cache"]) == ("MISS", "HIT-MEMORY")
    assert "TokensPerSecond" not in {m["Name"] for m in hit["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "_aws" not in health  # only answering routes make metrics


def _field(metric: str) -> str:
    from handler.observability.metrics import EMF_METRICS

    return next(field for field, name, _ in EMF_METRICS if name == metric)


def test_a_cache_fault_shows_in_the_next_emf_record(settings: Settings, access_log: io.StringIO, tmp_path: Any) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    (line,) = emf_lines(settings.model_copy(update={"cache_dir": str(blocker / "cache")}), access_log, ["x"])[:1]
    assert line["cache_faults"] >= 1
    assert "CacheFaults" in {m["Name"] for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


def test_auto_picks_emf_inside_lambda_and_prometheus_elsewhere(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    assert TestClient(create_app(settings)).get("/metrics").status_code == 200
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat")
    assert TestClient(create_app(settings)).get("/metrics").status_code == 404
