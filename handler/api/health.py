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
    return HealthResponse(
        status="ok",
        model=ModelStatus(
            file=Path(model.settings.model_path).name,
            loaded=model.loaded,
            load_seconds=model.load_seconds,
            generations=model.generations,
        ),
        cache=await run_in_threadpool(service.cache.stats),
    )
