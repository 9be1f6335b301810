"""Request and response bodies of `POST /v1/messages`, shaped as Anthropic's Messages API shapes them.

The request allows unknown fields only so that `unsupported()` can name each one in a 400, as the
OpenAI-compatible routes do: a parameter this service cannot honour is refused, never silently ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.api.openai_schemas import LoraScale, Text
from handler.api.parameters import refuse_undeclared
from handler.cache.policy import CacheMode
from handler.core.errors import BadRequest
from handler.core.types import ChatMessage, ToolCall, ToolSpec
from handler.service.tool_calls import ChoiceMode, ToolChoice, ToolRequest, tool_request

# Parameters of the Messages API this service does not implement, with the values that ask for nothing.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "thinking": ({"type": "disabled"},),
    "mcp_servers": ([],),
    "container": (),
}
MAX_STOP_SEQUENCES = 16
# Anthropic's tool choices as chat's: `any` tool is `required`, one `tool` by name a `function`.
CHOICE_MODES: dict[str, ChoiceMode] = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}


class CacheControl(BaseModel):
    """Anthropic's prompt-caching mark: accepted and ignored, since shared prompt prefixes are reused anyway."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text
    cache_control: CacheControl | None = None
    citations: list[Any] | None = Field(None, description="Accepted and ignored.")


class ToolUseBlock(BaseModel):
    """A tool call the model made in an earlier turn, sent back with the conversation."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None

    def call(self) -> ToolCall:
        return ToolCall(self.id, self.name, json.dumps(self.input, ensure_ascii=False, separators=(",", ":")))


class ToolResultBlock(BaseModel):
    """What a tool returned for the call `tool_use_id`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_result"]
    tool_use_id: str
    content: Text | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(block.text for block in self.content)

    def message(self) -> ChatMessage:
        """A tool message; a result marked as an error says so to the model."""
        return ChatMessage(
            "tool", f"Error: {self.text()}" if self.is_error else self.text(), tool_call_id=self.tool_use_id
        )


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: Text | list[ContentBlock]

    def chat_messages(self, index: int) -> list[ChatMessage]:
        """As chat messages: text blocks joined by newlines (as chat's parts are); an assistant's `tool_use`
        blocks as its tool calls; a user's `tool_result` blocks as tool messages, before its text."""
        if isinstance(self.content, str):
            return [ChatMessage(self.role, self.content)]
        text = "\n".join(block.text for block in self.content if isinstance(block, TextBlock))
        wrong = "tool_result" if self.role == "assistant" else "tool_use"
        if any(block.type == wrong for block in self.content):
            raise BadRequest(f"messages.{index}: a {self.role} message cannot hold `{wrong}` blocks.", "messages")
        if self.role == "assistant":
            calls = tuple(block.call() for block in self.content if isinstance(block, ToolUseBlock))
            return [ChatMessage("assistant", text, calls)]
        results = [block.message() for block in self.content if isinstance(block, ToolResultBlock)]
        has_text = any(isinstance(block, TextBlock) for block in self.content)
        return [*results, ChatMessage("user", text)] if has_text or not results else results


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="A JSON Schema of the tool's input object.")
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, description="With `tool`: the tool the model must call.")
    disable_parallel_tool_use: bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, description="Accepted; it does not change the answer.")


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Text = Field(description="The served model's id, as `GET /v1/models` lists it.")
    max_tokens: int = Field(ge=1, strict=True, description="Most tokens to generate (required, as Anthropic's).")
    messages: list[MessageIn] = Field(min_length=1, description="The conversation, ending with a user message.")
    system: Text | list[TextBlock] | None = Field(None, description="A system prompt: a string or text blocks.")
    stop_sequences: list[Text] | None = Field(None, description="Strings where the generation stops.")
    temperature: float | None = Field(None, ge=0, le=1, description="The service's default when left out.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, strict=True)
    tools: list[Tool] | None = Field(None, description="Tools the model may call.")
    tool_choice: ToolChoiceIn | None = None
    metadata: Metadata | None = None
    service_tier: str | None = Field(None, description="Accepted; there is one tier.")
    stream: bool = Field(False, description="Server-sent events; under a function (Mangum), sent all at once.")
    cache: CacheMode = Field("default", description="As on /chat; `Cache-Control` works too (an extension).")
    lora_scale: LoraScale = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, stops: list[str] | None) -> list[str] | None:
        if stops and len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if stops and any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def tool_request(self) -> ToolRequest | None:
        """The tools it offers and what it lets the model do with them (`any` is chat's `required`, `tool`
        a function by name); None: none offered. Several calls at once only when `disable_parallel_tool_use`
        is sent false; left out, one call per answer, as on chat. Raises BadRequest."""
        choice = self.tool_choice
        wanted: ToolChoice | None = None
        parallel: bool | None = None
        if choice is not None:
            if choice.type == "tool" and not choice.name:
                raise BadRequest("`tool_choice` of type `tool` needs the tool's `name`.", param="tool_choice")
            wanted = ToolChoice(CHOICE_MODES[choice.type], choice.name if choice.type == "tool" else None)
            if choice.disable_parallel_tool_use is not None:
                parallel = not choice.disable_parallel_tool_use
        specs = [ToolSpec(tool.name, tool.description, _schema_text(tool.input_schema)) for tool in self.tools or ()]
        return tool_request(specs, wanted, parallel)

    def unsupported(self) -> None:
        """Raise a 400 naming the first parameter this service cannot honour."""
        refuse_undeclared(self.model_extra, NOT_IMPLEMENTED)

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n".join(block.text for block in self.system) or None


def _schema_text(schema: dict[str, Any]) -> str:
    """As chat spells a function's parameters, so the same tools are the same prompt and key."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


# The answer


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessagesUsage(BaseModel):
    input_tokens: int
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[TextOut | ToolUseOut]
    model: str
    stop_reason: StopReason | None = Field(
        description="`end_turn`, or `max_tokens` when max_tokens (or the generation deadline) cut the answer."
    )
    stop_sequence: str | None = None
    usage: MessagesUsage
