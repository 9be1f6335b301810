"""The app factory: one ASGI app for Mangum and uvicorn alike, its state on `app.state`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from handler.api import chat, embeddings, health, messages, openai, responses, tokens
from handler.cache.response_cache import ResponseCache
from handler.core.config import load_settings
from handler.core.settings import Settings
from handler.engine.model import ModelHolder
from handler.middleware.auth import ApiKeyMiddleware, ApiKeys
from handler.middleware.body_limit import BodyLimitMiddleware
from handler.middleware.error_responses import install_error_handlers
from handler.middleware.json_body import JsonBodyMiddleware
from handler.middleware.request_context import RequestContextMiddleware
from handler.observability.logs import configure_logging
from handler.observability.metrics import PrometheusMetrics, make_metrics
from handler.service.chat_service import ChatService
from handler.service.embedding_service import EmbeddingService
from handler.service.served_models import ServedModels


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Under uvicorn: free threads, the model and the disk cache on exit. Mangum runs with lifespan off
    (a function is frozen, then dropped, without warning)."""
    yield
    await run_in_threadpool(app.state.embeddings.close)
    await run_in_threadpool(app.state.chat.close)


def create_app(settings: Settings | None = None, *, model: ModelHolder | None = None) -> FastAPI:
    """Build the app without touching the model: it loads on the first request that needs it."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    for note in settings.notes:
        logging.getLogger("handler.config").warning(note)
    app = FastAPI(
        lifespan=_lifespan,
        title="LLM chat service",
        summary="A GGUF model behind /chat and an OpenAI-compatible /v1 API, with a tiered response cache.",
        version="0.1.0",
    )
    app.state.settings = settings
    app.state.model = model or ModelHolder(settings)
    cache = ResponseCache.from_settings(settings)
    app.state.served = ServedModels(settings, app.state.model)
    app.state.chat = ChatService(settings, app.state.served, cache)
    app.state.embeddings = EmbeddingService(settings, app.state.served, cache)
    install_error_handlers(app)
    app.add_middleware(JsonBodyMiddleware)  # inside the body limit: it reads a whole, bounded body
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds)
    app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(settings))
    app.state.metrics = make_metrics(settings.metrics, app.state.chat)
    if isinstance(app.state.metrics, PrometheusMetrics):
        app.add_route("/metrics", app.state.metrics.endpoint, include_in_schema=False)
    # Added last, so it runs first: the request id exists for both others.
    app.add_middleware(RequestContextMiddleware, record=app.state.metrics.record)
    app.include_router(chat.router)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(embeddings.router)
    app.include_router(tokens.router)
    app.include_router(health.router)
    return app
