"""Response bodies of the OpenAI-compatible routes, shaped as the OpenAI API shapes them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from handler.core.types import ToolCall


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


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments, JSON text that follows the function's `parameters` schema.")


class ToolCallOut(BaseModel):
    id: str = Field(description="`call_` and hex: what a tool message's `tool_call_id` answers.")
    type: Literal["function"] = "function"
    function: FunctionCallOut

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallOut:
        return cls(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The answer's text; null when it only calls tools.")
    tool_calls: list[ToolCallOut] | None = None


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
