"""`GET /health`: is the service up, is the model loaded, how is the cache doing; never loads the model.

Open to all, as platforms probe it without a key; when API keys are configured, a caller without a
valid one gets only the status, not the model file's name, the generation count or the cache's figures.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from handler.api.deps import AuthenticatedDep, ChatServiceDep
from handler.api.schemas import HealthResponse, HealthStatus, ModelStatus

router = APIRouter()


@router.get("/health", response_model=HealthResponse | HealthStatus)
async def health(service: ChatServiceDep, authenticated: AuthenticatedDep) -> HealthResponse | HealthStatus:
    model = service.model
    available = True if model.loaded else model.source.present()
    cache = await run_in_threadpool(service.cache.stats)
    degraded = available is False or any(isinstance(t, dict) and t.get("degraded") for t in cache.values())
    status = "degraded" if degraded else "ok"
    if not authenticated:
        return HealthStatus(status=status)
    return HealthResponse(
        status=status,
        model=ModelStatus(
            file=Path(model.settings.model_path).name,
            loaded=model.loaded,
            available=available,
            load_seconds=model.load_seconds,
            generations=model.generations,
        ),
        cache=cache,
    )
