"""Request and response bodies of the OpenAI-compatible routes, shaped as the OpenAI API shapes them.

Requests allow unknown fields only so that `unsupported()` can name each one in a 400: a
parameter this engine cannot honour is refused, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from handler.cache.policy import CacheMode
from handler.core.errors import BadRequest

# Parameters of the OpenAI API this service does not implement, with the values that ask for
# nothing (clients often send the default explicitly); any other value is refused.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "suffix": ("",),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (False,),
    "response_format": ({"type": "text"},),
}


def _utf8(text: str) -> str:
    """JSON can escape a lone surrogate, which no model input can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate escape is not)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="Send a last chunk with `usage` and no choices.")


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Text = Field(description="The served model's id, as `GET /v1/models` lists it.")
    max_tokens: int | None = Field(None, ge=1, strict=True, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0, le=2, description="The service's default when left out.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, strict=True, description="llama.cpp's top-k (an extension).")
    min_p: float | None = Field(None, ge=0, le=1, description="llama.cpp's min-p (an extension).")
    repeat_penalty: float | None = Field(None, gt=0, description="llama.cpp's repeat penalty (an extension).")
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        strict=True,
        description="The service's seed when left out, so the same request gets the same answer.",
    )
    stop: Text | list[Text] | None = Field(None, description="Up to 4 strings where the generation stops.")
    stream: bool = Field(False, description="Server-sent events; under a function (Mangum), sent all at once.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted for compatibility; it does not change the answer.")
    cache: CacheMode = Field("default", description="As on /chat; `Cache-Control` works too.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def unsupported(self) -> None:
        """Raise a 400 naming the first parameter this service cannot honour."""
        for name, value in (self.model_extra or {}).items():
            if value is None or value in NOT_IMPLEMENTED.get(name, ()):
                continue
            if name in NOT_IMPLEMENTED:
                raise BadRequest(
                    f"The parameter `{name}` is not supported by this service (llama.cpp, one "
                    f"choice per request, text only); leave it out.",
                    param=name,
                )
            raise BadRequest(
                f"Unknown parameter `{name}`; see /docs for the parameters this service accepts.", param=name
            )


class CompletionRequest(OpenAIRequest):
    prompt: Text | list[Text] = Field(description="The raw prompt: no system prompt or template is added.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("exactly one prompt per request (a list of one string)")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("prompt must not be empty")
        return prompt


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True, description="OpenAI's newer max_tokens.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str = Field(description="stop or length (also when the generation deadline cut it short).")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-chat-service"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
