"""Metrics from the one log line per request: CloudWatch embedded metric format (EMF) when running
as a function, a Prometheus `/metrics` endpoint under uvicorn.

Both read the fields `request_context` already writes (route, status, cache, tokens, latency), so
logs and metrics cannot disagree. EMF needs no agent and no API call: the log line itself carries
the `_aws` block from which CloudWatch makes the metrics. Prometheus needs state between scrapes,
which a function (frozen between invocations, one of many) does not have: hence one each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from handler.service.chat_service import ChatService
    from handler.service.stats import ServiceStats

NAMESPACE = "LLMChatService"
ANSWER_ROUTES = ("/chat", "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")

# (log field, EMF metric name, unit)
EMF_METRICS = [
    ("latency_ms", "Latency", "Milliseconds"),
    ("prompt_tokens", "PromptTokens", "Count"),
    ("completion_tokens", "CompletionTokens", "Count"),
    ("tokens_per_second", "TokensPerSecond", "Count/Second"),
    ("model_load_s", "ModelLoadTime", "Seconds"),
    ("cache_faults", "CacheFaults", "Count"),
]


def metrics_mode(setting: str) -> str:
    """`auto`: EMF inside AWS Lambda (its runtime sets AWS_LAMBDA_FUNCTION_NAME), Prometheus elsewhere."""
    if setting != "auto":
        return setting
    return "emf" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "prometheus"


class CacheFaults:
    """Disk and shared-table faults since the last request line: the per-request view of two counters."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self._seen = 0

    def since_last(self) -> int:
        total = self.service.cache_faults
        new, self._seen = total - self._seen, total
        return new


class EmfMetrics:
    def __init__(self, service: ChatService) -> None:
        self.faults = CacheFaults(service)

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The `_aws` block and the values it names, to add to the request's log line."""
        if fields.get("route") not in ANSWER_ROUTES:
            return {}
        extra: dict[str, Any] = {
            "cache_faults": self.faults.since_last(),
            "Route": fields["route"],
            "Cache": fields.get("cache", "ERROR"),
            "Status": str(fields.get("status")),
        }
        values = {**fields, **extra}
        metrics = []
        for field, name, unit in EMF_METRICS:
            if values.get(field) is not None:
                metrics.append({"Name": name, "Unit": unit})
                extra[name] = values[field]  # EMF reads each metric's value from the key of its name
        extra["_aws"] = {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {"Namespace": NAMESPACE, "Dimensions": [["Route", "Cache"], ["Route", "Status"]], "Metrics": metrics}
            ],
        }
        return extra


class PrometheusMetrics:
    """prometheus_client is imported here: a function never pays for it."""

    def __init__(self, service: ChatService) -> None:
        import prometheus_client as prom

        self._prom = prom
        self.registry = prom.CollectorRegistry()  # one per app: tests and embedders make several
        self.requests = prom.Counter(
            "chat_requests", "Requests answered", ["route", "status", "cache"], registry=self.registry
        )
        self.latency = prom.Histogram(
            "chat_request_latency_seconds",
            "Time to the whole response",
            ["route", "cache"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens = prom.Counter("chat_tokens", "Tokens of generated answers", ["kind"], registry=self.registry)
        self.generation = prom.Counter("chat_generation_seconds", "Time spent generating", registry=self.registry)

        class StateCollector:
            """What the service holds right now, read at scrape time."""

            def collect(self) -> Any:
                yield from state_metrics(service.stats())

        self.registry.register(StateCollector())

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        route = fields.get("route")
        if route not in ANSWER_ROUTES:
            return {}
        cache = fields.get("cache", "ERROR")
        self.requests.labels(route, str(fields.get("status")), cache).inc()
        self.latency.labels(route, cache).observe(fields["latency_ms"] / 1000)
        if fields.get("generation_s"):
            self.tokens.labels("prompt").inc(fields.get("prompt_tokens", 0))
            self.tokens.labels("completion").inc(fields.get("completion_tokens", 0))
            self.generation.inc(fields["generation_s"])
        return {}

    async def endpoint(self, request: Request) -> Response:
        # Collecting reads the service's stats, which count the disk tier's entries: off the event loop.
        body = await run_in_threadpool(self._prom.generate_latest, self.registry)
        return Response(body, media_type=self._prom.CONTENT_TYPE_LATEST)


def state_metrics(stats: ServiceStats) -> Iterator[Any]:
    """What the service holds at scrape time, as Prometheus metric families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    tiers = stats.tiers()
    hits = CounterMetricFamily("chat_cache_hits", "Answers served from each cache tier", labels=["tier"])
    for name, figures in tiers.items():
        hits.add_metric([name], figures["hits"])
    yield hits
    yield CounterMetricFamily("chat_cache_misses", "Requests the cache could not answer", value=stats.cache["misses"])
    faults = CounterMetricFamily("chat_cache_faults", "Cache tier faults (degraded to the others)", labels=["tier"])
    for name, figures in tiers.items():
        if "faults" in figures:
            faults.add_metric([name], figures["faults"])
    yield faults
    model = stats.model
    yield GaugeMetricFamily("chat_model_loaded", "1 once the model is loaded", value=int(model.loaded))
    yield GaugeMetricFamily(
        "chat_model_load_seconds", "How long the model took to load", value=model.load_seconds or 0.0
    )
    yield CounterMetricFamily("chat_generations", "Generations run", value=model.generations)
    yield GaugeMetricFamily("chat_pending_generations", "Distinct generations queued or running", value=stats.pending)
    engine = stats.engine
    if engine is None:
        return
    yield GaugeMetricFamily("chat_engine_sequences_running", "Sequences admitted and not finished", value=engine.active)
    yield GaugeMetricFamily("chat_engine_sequences_waiting", "Requests not admitted yet", value=engine.waiting)
    yield GaugeMetricFamily("chat_engine_kv_cells", "KV cells in the pool", value=engine.n_ctx)
    yield GaugeMetricFamily(
        "chat_engine_kv_cells_reserved", "KV cells the running sequences may fill", value=engine.reserved_cells
    )
    yield GaugeMetricFamily(
        "chat_engine_kv_cells_cached", "KV cells idle slots keep for reuse", value=engine.cached_cells
    )
    yield CounterMetricFamily(
        "chat_engine_prompt_tokens_reused",
        "Prompt tokens not decoded thanks to a cached prefix",
        value=engine.prompt_tokens_reused,
    )
    yield CounterMetricFamily(
        "chat_engine_prompt_tokens",
        "Prompt tokens of admitted sequences, reused or decoded",
        value=engine.prompt_tokens,
    )
    yield GaugeMetricFamily(
        "chat_engine_kv_cache_usage_ratio",
        "KV cells holding tokens (running sequences and idle caches) over the pool",
        value=engine.used_cells / engine.n_ctx if engine.n_ctx else 0.0,
    )
    for name, doc, histogram in (
        (
            "chat_engine_time_to_first_token_seconds",
            "From submit to a sequence's first token",
            engine.time_to_first_token,
        ),
        ("chat_engine_inter_token_latency_seconds", "Between a sequence's tokens", engine.inter_token_latency),
    ):
        if histogram is not None:
            buckets = [(str(bound), count) for bound, count in zip(histogram.buckets, histogram.counts, strict=False)]
            yield HistogramMetricFamily(
                name, doc, buckets=[*buckets, ("+Inf", histogram.count)], sum_value=histogram.total
            )
    yield CounterMetricFamily(
        "chat_engine_draft_tokens", "Prompt-lookup draft tokens verified", value=engine.draft_tokens
    )
    yield CounterMetricFamily(
        "chat_engine_draft_tokens_accepted", "Draft tokens the sampler drew too", value=engine.draft_tokens_accepted
    )


class NoMetrics:
    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {}


Recorder = Callable[[dict[str, Any]], dict[str, Any]]


def make_metrics(mode: str, service: ChatService) -> EmfMetrics | PrometheusMetrics | NoMetrics:
    mode = metrics_mode(mode)
    if mode == "emf":
        return EmfMetrics(service)
    if mode == "prometheus":
        return PrometheusMetrics(service)
    return NoMetrics()
