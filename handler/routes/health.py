"""`GET /health`: is the service up, is the model loaded; never loads it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from handler.dependencies import get_model
from handler.model import ModelHolder
from handler.schemas import HealthResponse, ModelStatus

router = APIRouter()


@router.get("/health", response_model=HealthResponse)
async def health(model: ModelHolder = Depends(get_model)) -> HealthResponse:
    return HealthResponse(
        status="ok",
        model=ModelStatus(
            file=Path(model.settings.model_path).name,
            loaded=model.loaded,
            load_seconds=model.load_seconds,
            generations=model.generations,
        ),
    )
