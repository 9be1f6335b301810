"""What the Responses and Messages routes do as `/v1/chat/completions` does: a conversation and the tools it
offers made into the model's prompt (`handler.service.tool_calls` plans the tools), and the answer read
back as text and tool calls, whole or piece by piece.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from handler.core.errors import BadRequest
from handler.core.types import ChatMessage, ChatPrompt, Prompt, ToolCall
from handler.service.chat_service import ChatService
from handler.service.prompts import chat_prompt
from handler.service.tool_calls import ParsedAnswer, ToolPlan, ToolRequest, ToolStream, has_tool_history, plan_tools


@dataclass(frozen=True)
class Conversation:
    """The model's prompt for a conversation, and the plan its answer is read with (None: no tools)."""

    prompt: Prompt
    plan: ToolPlan | None

    @property
    def grammar(self) -> str | None:
        """What the tools hold the answer to, if anything (it replaces a structured-output grammar)."""
        return self.plan.grammar if self.plan is not None else None

    def read(self, text: str, seed: str) -> ParsedAnswer:
        """The answer's text and calls; `seed` makes the calls' ids (the response's id)."""
        return self.plan.parse(text, seed) if self.plan is not None else ParsedAnswer(text)

    def reader(self, seed: str) -> AnswerReader:
        return AnswerReader(self.plan.stream(seed) if self.plan is not None and self.plan.reads_calls else None)


class AnswerReader:
    """An answer read piece by piece: the text known to be text as it comes, then the rest and the calls.
    What it gives adds up to `Conversation.read`'s answer."""

    def __init__(self, tools: ToolStream | None) -> None:
        self.tools = tools

    def feed(self, piece: str) -> str:
        return piece if self.tools is None else self.tools.feed(piece)

    def finish(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """`text`: the whole answer."""
        return ("", ()) if self.tools is None else self.tools.finish(text)


@contextmanager
def field_names(renames: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """The tool module names the fields at fault as chat spells them (`tools.0.function.name`): a BadRequest
    raised inside has them spelled as the route does, by `renames` (pairs of chat's and the route's)."""
    try:
        yield
    except BadRequest as exc:
        message, param = exc.public_message, exc.param
        for chats, ours in renames:
            message, param = message.replace(chats, ours), param and param.replace(chats, ours)
        if (message, param) == (exc.public_message, exc.param):
            raise
        raise BadRequest(message, param, exc.code) from None


async def conversation(service: ChatService, messages: list[ChatMessage], tools: ToolRequest | None) -> Conversation:
    """As chat makes it: the tools planned for the model's chat template (which decides how they are called;
    making their grammar imports llama_cpp, on a thread), then the messages as the chat prompt. Raises
    BadRequest for a prompt over `max_prompt_chars`, or tools the planner refuses."""
    plan = None
    if tools is not None or has_tool_history(messages):
        plan = await run_in_threadpool(plan_tools, tools, messages, await service.chat_template())
    rendered = list(plan.messages) if plan is not None else messages
    prompt = chat_prompt(service.settings, rendered, plan.tools if plan is not None else ())
    service.check_prompt((prompt.fallback if isinstance(prompt, ChatPrompt) else prompt).full_text)
    return Conversation(prompt, plan)
