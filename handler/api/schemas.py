"""Request and response bodies of the HTTP API; every field documents itself in /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.api.openai_schemas import Text
from handler.cache.policy import CacheMode


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What the human says; the system prompt is added by the service.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Most tokens to generate; the service's default (100 unless configured) when left out.",
    )
    model: Text | None = Field(
        None,
        description="The model, or `<model>:<adapter>` for a LoRA adapter (GET /v1/models); the model when left out.",
    )
    cache: CacheMode = Field(
        "default",
        description="`no-cache`: generate afresh (and store); `no-store`: do not store this answer; `off`: both. "
        "The `Cache-Control: no-cache` / `no-store` request headers do the same.",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must contain some text, not only whitespace")
        return prompt


class ChatResponse(BaseModel):
    text: str = Field(description="The model's answer, without surrounding whitespace.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str
    param: str | None = Field(
        None, description="The request field at fault; on /v1 always present (null where none), as OpenAI's."
    )
    code: str | None = Field(
        None, description="/v1 only, always present: OpenAI's error code (`context_length_exceeded`, ...) or null."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelStatus(BaseModel):
    file: str
    loaded: bool
    available: bool | None = Field(
        description="Whether the model is loaded or its file is there to load (null: an s3:// model not yet fetched)."
    )
    load_seconds: float | None
    generations: int


class EngineStatus(BaseModel):
    """The engine's gauges once the model is loaded."""

    slots: int = Field(description="Sequences the engine decodes together (`n_parallel`).")
    running: int = Field(description="Sequences admitted and not finished.")
    waiting: int = Field(description="Requests submitted and not admitted yet.")
    kv_cells: int = Field(description="KV cells in the pool.")
    kv_cells_used: int = Field(description="KV cells holding tokens: the running sequences' and the idle caches'.")
    kv_cells_reserved: int = Field(description="KV cells the running sequences may fill (prompt and max_tokens).")
    kv_cells_cached: int = Field(description="KV cells idle slots keep for prefix reuse.")
    prompt_tokens_reused: int = Field(description="Prompt tokens not decoded thanks to a cached prefix, in all.")


class HealthStatus(BaseModel):
    """What `/health` tells a caller without a valid key when API keys are configured."""

    status: str = Field(description="`ok`, or `degraded`: the model file is missing, or a cache tier is failing.")


class HealthResponse(HealthStatus):
    """What `/health` tells a caller with a valid key, or anyone when no API keys are configured."""

    model: ModelStatus
    engine: EngineStatus | None = Field(None, description="null before the model is loaded.")
    cache: dict[str, Any] = Field(description="Hits per tier, misses, entries and bytes on disk.")
