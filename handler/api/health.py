"""`GET /health`: is the service up, is the model loaded, how are the engine and the cache doing; never
loads the model.

Open to all, as platforms probe it without a key; when API keys are configured, a caller without a
valid one gets only the status, not the model file's name, the generation count or the figures.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from handler.api.deps import AuthenticatedDep, ChatServiceDep
from handler.api.schemas import EngineStatus, HealthResponse, HealthStatus, ModelStatus

router = APIRouter()


@router.get("/health", response_model=HealthResponse | HealthStatus)
async def health(service: ChatServiceDep, authenticated: AuthenticatedDep) -> HealthResponse | HealthStatus:
    stats = await run_in_threadpool(service.stats)
    status = "degraded" if stats.degraded else "ok"
    if not authenticated:
        return HealthStatus(status=status)
    engine = stats.engine
    return HealthResponse(
        status=status,
        model=ModelStatus(
            file=stats.model.file,
            loaded=stats.model.loaded,
            available=stats.model.available,
            load_seconds=stats.model.load_seconds,
            generations=stats.model.generations,
        ),
        engine=None
        if engine is None
        else EngineStatus(
            slots=engine.slots,
            running=engine.active,
            waiting=engine.waiting,
            kv_cells=engine.n_ctx,
            kv_cells_used=engine.used_cells,
            kv_cells_reserved=engine.reserved_cells,
            kv_cells_cached=engine.cached_cells,
            prompt_tokens_reused=engine.prompt_tokens_reused,
        ),
        cache=stats.cache,
    )
