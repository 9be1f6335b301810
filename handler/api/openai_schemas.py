"""Request bodies of the OpenAI-compatible routes, shaped as the OpenAI API shapes them.

Requests allow unknown fields only so that `unsupported()` can name each one in a 400: a
parameter this engine cannot honour is refused, never silently ignored.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from handler.api.parameters import refuse_undeclared
from handler.cache.policy import CacheMode
from handler.core.errors import BadRequest
from handler.core.types import NO_PARAMETERS, ChatMessage, LogitBias, ToolCall, ToolSpec
from handler.service.tool_calls import ToolChoice, ToolRequest, tool_request

# Parameters of the OpenAI API this service does not implement, with the values that ask for
# nothing (clients often send the default explicitly); any other value is refused.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),
    "echo": (False,),
    "top_logprobs": (0,),  # a chat parameter; on /v1/completions `logprobs` is the number
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
}
TOKEN_ID = re.compile(r"[0-9]{1,10}")
# The scale of a LoRA adapter named by the model id, on every route that takes one.
LoraScale = Annotated[
    float | None,
    Field(
        ge=-10,
        le=10,
        allow_inf_nan=False,
        description="With a LoRA adapter's model id (`<model>:<adapter>`): the scale it is applied at, 1.0 "
        "when left out (an extension).",
    ),
]
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
    n: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Choices sampled from the one prompt, up to the service's `max_choices` (8): choice i with "
        "`seed` + i (at temperature 0 all are the same greedy answer); each counts against max_pending_generations.",
    )
    stream: bool = Field(False, description="Server-sent events; under a function (Mangum), sent all at once.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted for compatibility; it does not change the answer.")
    # Accepted as OpenAI accepts them; none changes the answer, so none is part of the cache key.
    store: bool | None = Field(
        None, description="`false` or left out: this service keeps no stored completions (`true` is a 400)."
    )
    metadata: dict[str, str] | None = Field(
        None, max_length=16, description="Accepted for compatibility (up to 16 pairs); it does not change the answer."
    )
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        None, description="Accepted for compatibility; there is one tier here."
    )
    parallel_tool_calls: bool | None = Field(
        None,
        description="With `tools` on chat: whether one answer may call several tools (false when left out, as "
        "llama-server has it); it changes nothing without tools.",
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, description="Accepted and ignored: the served model is not a reasoning model."
    )
    cache: CacheMode = Field("default", description="As on /chat; `Cache-Control` works too.")
    response_format: ResponseFormat | None = Field(
        None,
        description="`json_object` or `json_schema`: the answer is held to JSON (to the schema) by a llama.cpp "
        "grammar while it is sampled; it parses unless max_tokens cuts it (finish_reason `length`).",
    )
    lora_scale: LoraScale = None
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

    def max_tokens_param(self) -> str:
        """The field the answer's length came from, for an error to name."""
        return "max_tokens"

    def choices(self) -> int:
        """How many choices to sample (`n`; 1 when left out)."""
        return 1 if self.n is None else self.n

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
        if self.store:
            raise BadRequest(
                "`store: true` asks OpenAI to keep the completion for later retrieval; this service keeps no "
                "stored completions (nothing here retrieves them). Leave `store` unset or send false.",
                param="store",
            )
        refuse_undeclared(self.model_extra, NOT_IMPLEMENTED)


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


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text
    arguments: Text = Field(description="The call's arguments, JSON text.")


class ToolCallIn(BaseModel):
    """A call an earlier assistant message made, as the answer carried it."""

    model_config = ConfigDict(extra="forbid")

    id: Text
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = Field(
        None, description="Left out or null only on an assistant message with `tool_calls`."
    )
    tool_calls: list[ToolCallIn] | None = Field(None, description="An assistant message's calls of tools.")
    tool_call_id: Text | None = Field(None, description="A tool message: the id of the call it answers.")
    refusal: Text | None = Field(None, description="Accepted on an assistant message (answers carry it); not shown.")

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.tool_call_id is None) != (self.role != "tool"):
            raise ValueError("a message whose role is tool needs a tool_call_id, and only it has one")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is missing (it may be null only on an assistant message with tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)

    def message(self) -> ChatMessage:
        """As the service takes it: `developer` is a system message; calls as the answer carried them."""
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, self.text(), calls, self.tool_call_id)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 64 letters, digits, `_` or `-`.")
    description: Text | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] | None = Field(
        None, description="The JSON Schema of its arguments; left out, it takes none. The calls follow it."
    )
    strict: bool | None = Field(None, description="Accepted; the grammar always holds the arguments to the schema.")


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef

    def spec(self) -> ToolSpec:
        parameters = self.function.parameters
        return ToolSpec(
            self.function.name,
            self.function.description,
            NO_PARAMETERS if parameters is None else json.dumps(parameters, ensure_ascii=False, separators=(",", ":")),
        )


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolDef] | None = Field(
        None,
        description="Functions the model may call; the answer's `tool_calls` carry the calls, their arguments "
        "held to each function's `parameters` schema by a grammar.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="`auto` (with tools, the default), `none`, `required`, or a function by name."
    )
    max_completion_tokens: int | None = Field(None, ge=1, strict=True, description="OpenAI's newer max_tokens.")
    logprobs: bool | None = Field(None, strict=True, description="Each token's log-probability.")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        strict=True,
        description="With `logprobs`: this many most likely tokens at each step.",
    )

    def max_tokens_param(self) -> str:
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"

    def tool_request(self) -> ToolRequest | None:
        """The tools it offers and what it lets the model do with them; None: none offered. Raises BadRequest."""
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            wanted: ToolChoice | None = ToolChoice("function", choice.function.name)
        else:
            wanted = None if choice is None else ToolChoice(choice)
        structured = self.response_format is not None and not isinstance(self.response_format, TextFormat)
        if self.tools and structured and (wanted is None or wanted.mode != "none"):
            raise BadRequest("`response_format` and `tools` cannot be used together here.", param="response_format")
        return tool_request([tool.spec() for tool in self.tools or ()], wanted, self.parallel_tool_calls)

    def logprobs_asked(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise BadRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
            return None
        return self.top_logprobs or 0
