"""`POST /v1/embeddings`, in the OpenAI API's shapes: one vector per input, from the served model.

Same auth, limits, cache and errors as the other `/v1` routes; each input's vector is cached on its own.
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.api.deps import ServedModelsDep
from handler.api.openai import ERRORS
from handler.api.openai_schemas import Text
from handler.cache.policy import CacheMode, cache_policy
from handler.core.errors import BadRequest
from handler.service.embedding_service import EmbeddingService

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])


async def get_embedding_service(request: Request) -> EmbeddingService:
    service: EmbeddingService = request.app.state.embeddings
    return service


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(get_embedding_service)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text = Field(description="The served model's id, as `GET /v1/models` lists it.")
    input: Text | list[Text] = Field(description="A string, or a list of strings: one vector each, in order.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes, base64-encoded (as OpenAI's)."
    )
    dimensions: int | None = Field(
        None, ge=1, strict=True, description="Accepted only as the model's own size: vectors are never shortened."
    )
    user: str | None = Field(None, description="Accepted for compatibility; it does not change the answer.")
    cache: CacheMode = Field("default", description="As on /chat; `Cache-Control` works too.")

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        """OpenAI also takes token ids; this service embeds text only, and says so."""
        if isinstance(value, list) and any(isinstance(item, int | list) for item in value):
            raise ValueError("token ids are not accepted here; send the text (a string or a list of strings)")
        return value

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its float32 bytes in base64.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def float32_base64(vector: tuple[float, ...]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    response: Response,
    served: ServedModelsDep,
    service: EmbeddingServiceDep,
) -> EmbeddingResponse:
    """The pooled vector of each input (`embedding_pooling`, `embedding_normalize` in config)."""
    if served.lora_for(body.model) is not None:
        raise BadRequest(
            f"Embeddings come from the model alone, `{served.settings.served_model}`, not from a LoRA adapter.",
            param="model",
        )
    inputs = body.inputs()
    service.check_inputs(inputs)
    embedded = await service.embed(inputs, cache_policy(request.headers.get("cache-control"), body.cache))
    size = len(embedded.embeddings[0].vector)
    if body.dimensions is not None and body.dimensions != size:
        raise BadRequest(
            f"dimensions is {body.dimensions}, but this model's vectors have {size}; leave it out or send {size}.",
            param="dimensions",
        )
    response.headers["X-Cache"] = embedded.source
    fields: dict[str, Any] = {"cache": embedded.source, "inputs": len(inputs), "prompt_tokens": embedded.prompt_tokens}
    if request.app.state.settings.log_prompts:
        fields["prompt"] = inputs
    request.state.log_fields = fields
    data = [
        EmbeddingData(
            index=index,
            embedding=float32_base64(e.vector) if body.encoding_format == "base64" else list(e.vector),
        )
        for index, e in enumerate(embedded.embeddings)
    ]
    usage = EmbeddingUsage(prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens)
    return EmbeddingResponse(data=data, model=served.settings.served_model, usage=usage)
