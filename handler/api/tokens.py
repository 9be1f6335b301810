"""llama-server's `POST /tokenize` and `POST /detokenize`, in its shapes: to count a prompt's tokens
before sending it, or to find the ids `logit_bias` takes. They need the model's vocabulary, so they load
the model; they are never cached.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from handler.api.deps import ChatServiceDep
from handler.api.openai_schemas import Text
from handler.api.schemas import ErrorResponse

router = APIRouter(tags=["Tokens"])

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "A token id outside the model's vocabulary (`/detokenize`)."},
    401: {"model": ErrorResponse, "description": "API keys are configured and none valid was sent."},
    422: {"description": "The body does not match the schema; each field's problem is listed."},
    503: {"model": ErrorResponse, "description": "The model cannot be loaded right now."},
}


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Text = Field(description="The text to tokenize.")
    add_special: bool = Field(False, description="Add the begin-of-sequence token where the model wants one.")
    parse_special: bool = Field(True, description="Read control-token text (`<s>`, ...) as control tokens.")
    with_pieces: bool = Field(False, description="Each token as `{id, piece}`.")


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int] = Field(description="The token's text, or its bytes where they are not valid UTF-8.")


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[int] = Field(description="Token ids; control tokens are written as their text.")


class DetokenizeResponse(BaseModel):
    content: str = Field(description="The tokens' text (bytes that are not valid UTF-8 read as U+FFFD).")


def piece_json(piece: bytes) -> str | list[int]:
    """llama-server's rule: the text if it is valid UTF-8, else the bytes."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, service: ChatServiceDep) -> TokenizeResponse:
    model = service.model
    tokens = await run_in_threadpool(
        model.tokenize, body.content, add_special=body.add_special, parse_special=body.parse_special
    )
    if not body.with_pieces:
        return TokenizeResponse(tokens=tokens)
    pieces = await run_in_threadpool(model.token_pieces, tokens)
    return TokenizeResponse(tokens=[TokenPiece(id=t, piece=piece_json(p)) for t, p in zip(tokens, pieces, strict=True)])


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, service: ChatServiceDep) -> DetokenizeResponse:
    pieces = await run_in_threadpool(service.model.token_pieces, body.tokens)
    return DetokenizeResponse(content=b"".join(pieces).decode("utf-8", errors="replace"))
