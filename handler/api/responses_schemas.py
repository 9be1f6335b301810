"""Request and response bodies of `POST /v1/responses`, shaped as OpenAI's Responses API shapes them.

The request allows unknown fields only so that `unsupported()` can name each one in a 400, as on
`/v1/chat/completions`: a parameter this service cannot honour is refused, never silently ignored.
Stream events are typed here too; the route stamps their `sequence_number`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from handler.api.openai_schemas import JsonObjectFormat, LoraScale, Text, TextFormat
from handler.api.parameters import refuse_undeclared
from handler.cache.policy import CacheMode
from handler.core.errors import BadRequest
from handler.core.types import NO_PARAMETERS, ChatMessage, ToolSpec
from handler.service.tool_calls import ToolChoice, ToolRequest, tool_request

# Parameters of the Responses API this service does not implement, with the values that ask for nothing.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "include": ([],),
    "top_logprobs": (0,),
    "background": (False,),
    "max_tool_calls": (),
    "prompt": (),
    "stream_options": (),
}
# Parameters that only make sense with stored state, which this stateless service does not keep.
STATEFUL = ("previous_response_id", "conversation")
STATELESS = (
    "This service is stateless: it keeps no earlier responses or conversations, so `{name}` cannot be "
    "used. Send the earlier turns in `input` instead (the messages, and the output items of earlier "
    "responses)."
)


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text"]
    text: Text


class OutputTextIn(BaseModel):
    """An earlier response's text, sent back as part of the conversation."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["output_text"]
    text: Text
    annotations: list[Any] | None = Field(None, description="Accepted and ignored.")
    logprobs: list[Any] | None = Field(None, description="Accepted and ignored.")


class RefusalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["refusal"]
    refusal: Text


ContentPart = Annotated[InputText | OutputTextIn | RefusalIn, Field(discriminator="type")]


class MessageItem(BaseModel):
    """A message in `input`: `{"role", "content"}` (`type: "message"` optional), or an earlier response's
    output message sent back as it came (with its `id` and `status`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | list[ContentPart]
    id: str | None = Field(None, description="An output message's id; not used.")
    status: Literal["in_progress", "completed", "incomplete"] | None = Field(None, description="Not used.")

    def chat_message(self) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        if isinstance(self.content, str):
            return ChatMessage(role, self.content)
        return ChatMessage(
            role, "\n".join(part.refusal if isinstance(part, RefusalIn) else part.text for part in self.content)
        )


class FunctionCallItem(BaseModel):
    """A call the model made in an earlier response, sent back with the conversation."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="The arguments, a JSON object as text.")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(BaseModel):
    """What a function returned, for the call `call_id`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function_call_output"]
    call_id: str
    output: Text | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "\n".join(part.text for part in self.output)


def _item_type(value: Any) -> str:
    """A message may leave out `type`; any other item names its own."""
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type),
]


class JsonSchemaTextFormat(BaseModel):
    """As `response_format`'s json_schema on chat, with the schema's fields at the top level."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(max_length=64, description="The schema's name (as OpenAI requires it); not used.")
    description: str | None = None
    # `schema` would shadow BaseModel.schema
    json_schema: dict[str, Any] = Field(alias="schema", description="A JSON Schema the answer must follow.")
    strict: bool | None = Field(None, description="Accepted; the grammar always holds the answer to the schema.")


TextFormatIn = Annotated[TextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormatIn | None = Field(
        None,
        description="`text` (the default), `json_object` or `json_schema`: the answer is held to JSON (to the "
        "schema) by a llama.cpp grammar while it is sampled; it parses unless max_output_tokens cuts it.",
    )


class FunctionTool(BaseModel):
    """A function the model may call; only function tools: this service runs no tools of its own."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(description="1 to 64 letters, digits, `_` or `-`.")
    description: Text | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] | None = Field(
        None, description="The JSON Schema of its arguments; left out, it takes none. The calls follow it."
    )
    strict: bool | None = Field(None, description="Accepted; the grammar always holds the arguments to the schema.")

    def spec(self) -> ToolSpec:
        """As chat makes it of the same function, so the same tools are the same prompt and key."""
        parameters = self.parameters
        text = (
            NO_PARAMETERS if parameters is None else json.dumps(parameters, ensure_ascii=False, separators=(",", ":"))
        )
        return ToolSpec(self.name, self.description, text)


class NamedFunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Text = Field(description="The served model's id, as `GET /v1/models` lists it.")
    input: Text | list[InputItem] = Field(
        description="A user message as a string, or the conversation as a list of items: messages, and "
        "`function_call` / `function_call_output` items."
    )
    instructions: Text | None = Field(None, description="A system message, before the input.")
    max_output_tokens: int | None = Field(
        None, ge=1, strict=True, description="Most tokens to generate; the service's default when left out."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="The service's default when left out.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, strict=True, description="llama.cpp's top-k (an extension).")
    min_p: float | None = Field(None, ge=0, le=1, description="llama.cpp's min-p (an extension).")
    repeat_penalty: float | None = Field(None, gt=0, description="llama.cpp's repeat penalty (an extension).")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        strict=True,
        description="The service's seed when left out, so the same request gets the same answer (an extension).",
    )
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(
        None,
        description="Functions the model may call; `function_call` output items carry the calls, their "
        "arguments held to each function's `parameters` schema by a grammar.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = Field(
        None, description='`auto` (with tools, the default), `none`, `required`, or `{"type": "function", "name"}`.'
    )
    parallel_tool_calls: bool | None = Field(
        None, description="`true`: the model may call several tools at once; left out, one call per answer, as on chat."
    )
    stream: bool = Field(False, description="Server-sent events; under a function (Mangum), sent all at once.")
    store: bool | None = Field(
        None,
        description="Accepted and ignored: this service is stateless and stores no response "
        "(GET /v1/responses/{id} is always a 404).",
    )
    metadata: dict[str, str] | None = Field(None, description="Echoed in the response; it does not change the answer.")
    user: str | None = Field(None, description="Accepted; it does not change the answer.")
    safety_identifier: str | None = Field(None, description="Accepted; it does not change the answer.")
    prompt_cache_key: str | None = Field(None, description="Accepted; prompt prefixes are reused automatically.")
    service_tier: str | None = Field(None, description="Accepted; there is one tier.")
    reasoning: dict[str, Any] | None = Field(None, description="Accepted and ignored: the model does not reason.")
    truncation: Literal["disabled"] | None = Field(
        None, description="Only `disabled`: an input too long for the context is a 400, never cut."
    )
    cache: CacheMode = Field("default", description="As on /chat; `Cache-Control` works too (an extension).")
    lora_scale: LoraScale = None

    def unsupported(self) -> None:
        """Raise a 400 naming the first parameter this service cannot honour."""
        for name in STATEFUL:
            if (self.model_extra or {}).get(name) is not None:
                raise BadRequest(STATELESS.format(name=name), param=name)
        refuse_undeclared(self.model_extra, NOT_IMPLEMENTED)

    def tool_request(self) -> ToolRequest | None:
        """The tools it offers and what it lets the model do with them; None: none offered. Raises BadRequest."""
        choice = self.tool_choice
        if isinstance(choice, NamedFunctionChoice):
            wanted: ToolChoice | None = ToolChoice("function", choice.name)
        else:
            wanted = None if choice is None else ToolChoice(choice)
        if self.tools and self.structured_schema()[0] and (wanted is None or wanted.mode != "none"):
            raise BadRequest("`text.format` and `tools` cannot be used together here.", param="text.format")
        return tool_request([tool.spec() for tool in self.tools or ()], wanted, self.parallel_tool_calls)

    def items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input, id=None, status=None)]
        return list(self.input)

    def structured_schema(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether the answer must be JSON, the schema it must follow: None for any JSON object)."""
        fmt = self.text.format if self.text is not None else None
        if isinstance(fmt, JsonSchemaTextFormat):
            return True, fmt.json_schema
        return isinstance(fmt, JsonObjectFormat), None


# The answer


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"]
    call_id: str
    name: str
    arguments: str = Field(description="The arguments, a JSON object as text.")


OutputItem = OutputMessage | FunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = Field(
        None, description="`max_output_tokens` when the answer was cut (also by the generation deadline)."
    )
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    store: bool = Field(False, description="Always false: nothing is stored, whatever the request's `store`.")
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list, description="The request's tools, as it sent them.")
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
