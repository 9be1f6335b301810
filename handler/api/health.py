"""`GET /health`: is the service up, is the model loaded, how is the cache doing; never loads the model."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from handler.api.deps import ChatServiceDep
from handler.api.schemas import HealthResponse, ModelStatus

router = APIRouter()


@router.get("/health", response_model=HealthResponse)
async def health(service: ChatServiceDep) -> HealthResponse:
    model = service.model
    available = True if model.loaded else model.source.present()
    cache = await run_in_threadpool(service.cache.stats)
    degraded = available is False or any(isinstance(t, dict) and t.get("degraded") for t in cache.values())
    return HealthResponse(
        status="degraded" if degraded else "ok",
        model=ModelStatus(
            file=Path(model.settings.model_path).name,
            loaded=model.loaded,
            available=available,
            load_seconds=model.load_seconds,
            generations=model.generations,
        ),
        cache=cache,
    )
