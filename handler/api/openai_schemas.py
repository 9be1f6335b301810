"""Request and response bodies of the OpenAI-compatible routes, shaped as the OpenAI API shapes them.

Requests allow unknown fields only so that `unsupported()` can name each one in a 400: a
parameter this engine cannot honour is refused, never silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from handler.cache.policy import CacheMode
from handler.core.errors import BadRequest
from handler.core.types import LogitBias

# Parameters of the OpenAI API this service does not implement, with the values that ask for
# nothing (clients often send the default explicitly); any other value is refused.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "top_logprobs": (0,),  # a chat parameter; on /v1/completions `logprobs` is the number
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (False,),
}
TOKEN_ID = re.compile(r"[0-9]{1,10}")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on chat
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit on completions


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


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(max_length=64, description="The schema's name (as OpenAI requires it); not used.")
    description: str | None = None
    # `schema` would shadow BaseModel.schema
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON Schema; left out, any JSON object."
    )
    strict: bool | None = Field(None, description="Accepted; the grammar always holds the answer to the schema.")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


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
    response_format: ResponseFormat | None = Field(
        None,
        description="`json_object` or `json_schema`: the answer is held to JSON (to the schema) by a llama.cpp "
        "grammar while it is sampled; it parses unless max_tokens cuts it (finish_reason `length`).",
    )
    lora_scale: float | None = Field(
        None,
        ge=-10,
        le=10,
        allow_inf_nan=False,
        description="With a LoRA adapter's model id (`<model>:<adapter>`): the scale it is applied at, 1.0 "
        "when left out (an extension).",
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]] | None = Field(
        None, description="Token id (a string) to a bias, -100 to 100, added to its logit before sampling."
    )

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        seen: set[int] = set()
        for key in bias or {}:
            if not TOKEN_ID.fullmatch(key):
                raise ValueError(f"keys must be token ids (decimal integers), not {key!r}")
            if int(key) in seen:
                raise ValueError(f"token {int(key)} appears twice")
            seen.add(int(key))
        return bias

    def bias(self) -> LogitBias | None:
        """The logit bias as the engine and the cache key take it: sorted by token id; none as None."""
        if not self.logit_bias:
            return None
        return tuple(sorted((int(token), float(bias)) for token, bias in self.logit_bias.items()))

    def structured_schema(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether the answer must be JSON, the schema it must follow: None for any JSON object)."""
        fmt = self.response_format
        if isinstance(fmt, JsonSchemaFormat):
            return True, fmt.json_schema.json_schema
        return isinstance(fmt, JsonObjectFormat), None

    def logprobs_asked(self) -> int | None:
        """None: no log-probabilities; n: each token's, with the n most likely tokens in its place."""
        return None

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
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description="Each token's log-probability, with this many most likely tokens at each step.",
    )

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_number(cls, value: object) -> object:
        if value is False:  # what some clients send for "none"
            return None
        if isinstance(value, bool):
            raise ValueError("an integer from 0 to 5 (how many most likely tokens to list)")
        return value

    def logprobs_asked(self) -> int | None:
        return self.logprobs

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
    logprobs: bool | None = Field(None, strict=True, description="Each token's log-probability.")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        strict=True,
        description="With `logprobs`: this many most likely tokens at each step.",
    )

    def logprobs_asked(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise BadRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
            return None
        return self.top_logprobs or 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(description="Each token's text; `bytes:\\xNN...` for part of a UTF-8 character.")
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] = Field(description="The most likely tokens at each step, most likely first.")
    text_offset: list[int] = Field(description="Where each token begins, in characters of the prompt and the text.")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
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


class ChatTopLogprob(BaseModel):
    token: str = Field(description="The token's text; `bytes:\\xNN...` for part of a UTF-8 character.")
    logprob: float
    bytes: list[int] = Field(description="The token's bytes: they add up to the answer's UTF-8.")


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(description="The most likely tokens at this step, most likely first.")


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
