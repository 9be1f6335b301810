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
from handler.core.types import EmbeddingInput
from handler.service.embedding_service import EmbeddingService

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
TokenId = Annotated[int, Field(ge=0, strict=True)]


async def get_embedding_service(request: Request) -> EmbeddingService:
    service: EmbeddingService = request.app.state.embeddings
    return service


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(get_embedding_service)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text = Field(description="The served model's id, as `GET /v1/models` lists it.")
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]] = Field(
        description="A string, a list of strings, a list of token ids (one input) or a list of lists of token ids: "
        "one vector each, in order. Token ids are the served model's own (POST /tokenize) and are embedded as "
        "they are, with no begin-of-sequence token added."
    )
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
    def _one_kind(cls, value: object) -> object:
        """What OpenAI takes, said in one message rather than one per member of the union."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and (
            all(isinstance(item, str) for item in value)
            or all(is_token_id(item) for item in value)
            or all(isinstance(item, list) and all(is_token_id(t) for t in item) for item in value)
        ):
            return value
        raise ValueError(
            "a string, a list of strings, a list of token ids or a list of lists of token ids (non-negative integers)"
        )

    def inputs(self) -> list[EmbeddingInput]:
        """One entry per vector to answer: a text, or a tuple of token ids."""
        given: list[Any] = [self.input] if isinstance(self.input, str) else list(self.input)
        if given and all(isinstance(item, int) for item in given):
            return [tuple(given)]
        return [item if isinstance(item, str) else tuple(item) for item in given]


def is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
