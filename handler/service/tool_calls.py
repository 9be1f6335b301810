"""Tool calls on chat: what the model is shown, the grammar its answer is held to, and its calls read back.

The format is chosen by the model's chat template (`tool_style`):

- **native** formats (handler.service.tool_formats reads them): a template that lists tools itself and
  writes calls its own way gets the tools and the history as they are: **hermes** (`<tool_call>` blocks:
  Qwen 2.5, Hermes 2 Pro and 3), **llama3** (a `{"name": ..., "parameters": {...}}` object, maybe after
  `<|python_tag|>`: Llama 3.1 to 3.3), **mistral** (`[TOOL_CALLS]` and a JSON list of calls; call ids in
  the history shortened to the 9 characters its templates take).
- **generic** (llama-server's format for a template without tool support, the default SmolLM2's and a
  model without a template): a system message lists the tools and asks for one JSON object, either a call
  `{"tool_call": {"name": ..., "arguments": {...}}}` (with parallel calls, `{"tool_calls": [...]}`) or a
  reply `{"response": "..."}`; the history's calls are written that way and tool results as user messages.

Whenever a call is asked for (`required`, a named function) the answer is held by a llama.cpp grammar made
from the tools' parameter schemas, so its arguments parse and follow the schema; under the generic format
`auto` is held to call-or-reply too. `none` shows no tools and reads no calls.

Callable from any route: `tool_request` checks what a request asks, `plan_tools` gives the messages to render,
the tools for the template and the grammar; `ToolPlan.parse` reads an answer, `ToolPlan.stream` reads one piece
by piece. Pure, except that grammars come from llama-cpp-python's converter: `plan_tools` imports llama_cpp
when it makes one (call it on a worker thread).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal

import handler.service.tool_formats as formats
from handler.core.errors import BadRequest
from handler.core.types import NO_PARAMETERS, ChatMessage, ToolCall, ToolSpec  # noqa: F401 (NO_PARAMETERS: for routes)
from handler.engine.grammar import json_grammar

ParsedAnswer = formats.ParsedAnswer  # the routes read these here
call_id = formats.call_id
ChoiceMode = Literal["auto", "none", "required", "function"]
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names
RESPONSE_OPEN = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"response"[ \t\n\r]*:[ \t\n\r]*"')
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_PARTIAL_ESCAPE = re.compile(r"(\\(u[0-9a-fA-F]{0,3})?)?")  # what may still become a `\uXXXX` escape


class ToolStyle(StrEnum):
    GENERIC = "generic"
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str | None = None  # the function a `function` choice names


@dataclass(frozen=True)
class ToolRequest:
    """The tools a request offers, which it lets the model call, and whether several calls may come at once."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice = ToolChoice()
    parallel: bool = False

    @property
    def offered(self) -> tuple[ToolSpec, ...]:
        """The tools the model is shown: none under `none`, only the named one under a named choice."""
        if self.choice.mode == "none":
            return ()
        if self.choice.mode == "function":
            return tuple(tool for tool in self.tools if tool.name == self.choice.name)
        return self.tools


def tool_request(tools: Sequence[ToolSpec], choice: ToolChoice | None, parallel: bool | None) -> ToolRequest | None:
    """What a request asks, checked: None when it offers no tools (then a choice must ask for none).
    Raises BadRequest naming the field at fault."""
    names = [tool.name for tool in tools]
    for i, name in enumerate(names):
        if not TOOL_NAME.fullmatch(name):
            raise BadRequest(
                f"Tool names are 1 to 64 letters, digits, '_' or '-'; {name!r} is not.",
                param=f"tools.{i}.function.name",
            )
        if name in names[:i]:
            raise BadRequest(f"Two tools are named `{name}`.", param=f"tools.{i}.function.name")
    if choice is not None and choice.mode == "function" and choice.name not in names:
        raise BadRequest(f"`tool_choice` names `{choice.name}`, which is not among the tools.", param="tool_choice")
    if not tools:
        if choice is not None and choice.mode != "none":
            raise BadRequest("`tool_choice` needs `tools`.", param="tool_choice")
        return None
    return ToolRequest(tuple(tools), choice or ToolChoice(), bool(parallel))


def tool_style(template: str | None) -> ToolStyle:
    """How tools are called through a chat template (its source; None: the model has none, or the config
    template is used): natively where the template lists tools and writes calls in a format known here
    (`<tool_call>` blocks; Llama 3's `<|python_tag|>` or `"parameters"` and `ipython` results;
    `[TOOL_CALLS]`), else the generic format."""
    if template is None or "tools" not in template:
        return ToolStyle.GENERIC
    if formats.HERMES_OPEN in template:
        return ToolStyle.HERMES
    if formats.MISTRAL_CALLS in template:
        return ToolStyle.MISTRAL
    if formats.PYTHON_TAG in template or ('"parameters"' in template and "ipython" in template):
        return ToolStyle.LLAMA3
    return ToolStyle.GENERIC


def has_tool_history(messages: Sequence[ChatMessage]) -> bool:
    """Whether earlier turns hold tool calls or tool results, which need `plan_tools` even without tools."""
    return any(m.tool_calls or m.role == "tool" for m in messages)


def plan_tools(request: ToolRequest | None, messages: Sequence[ChatMessage], template: str | None) -> ToolPlan:
    """The messages to render, the tools for the template, and the grammar, for a model whose chat template
    is `template` (None: none, or the config template). Raises BadRequest: a tool message that answers no
    call, parameters the grammar converter cannot handle."""
    style = tool_style(template)
    history = _named_tool_results(messages)
    if style is ToolStyle.MISTRAL:
        history = formats.mistral_history(history)
    parallel = request is not None and request.parallel
    if request is None or not request.offered:  # no tools, or `none`: the history alone, and a text answer
        rendered = history if style is not ToolStyle.GENERIC else _generic_history(history, parallel)
        return ToolPlan(style, tuple(rendered), (), None, False)
    offered = request.offered
    parameters = [_parameters(tool, request.tools.index(tool)) for tool in offered]
    call = formats.call_schema(offered, parameters, "parameters" if style is ToolStyle.LLAMA3 else "arguments")
    if style is not ToolStyle.GENERIC:  # `auto` samples freely: the answer is text or calls, as the model writes
        grammar = None
        if request.choice.mode != "auto" and style is ToolStyle.HERMES:
            grammar = formats.hermes_grammar(call, parallel)
        elif request.choice.mode != "auto" and style is ToolStyle.MISTRAL:
            grammar = formats.mistral_grammar(call, parallel)
        elif request.choice.mode != "auto":
            grammar = formats.llama_grammar(call)
        return ToolPlan(style, tuple(history), offered, grammar, True)
    forced = request.choice.mode != "auto"
    calls = {"type": "array", "items": call, "minItems": 1} if parallel else call
    key = "tool_calls" if parallel else "tool_call"
    wrapped = {"type": "object", "properties": {key: calls}, "required": [key]}
    reply = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
    grammar = json_grammar(wrapped if forced else {"anyOf": [wrapped, reply]}, "tools")
    instructions = generic_instructions(offered, request.choice, parallel)
    return ToolPlan(style, tuple(_with_system(_generic_history(history, parallel), instructions)), (), grammar, True)


def generic_instructions(tools: Sequence[ToolSpec], choice: ToolChoice, parallel: bool) -> str:
    """The system message's text under the generic format: the tools, and the one JSON object to answer with."""
    listing = "\n".join(json.dumps(tool.as_openai()["function"], ensure_ascii=False) for tool in tools)
    call = '{"name": "<tool name>", "arguments": {<its arguments>}}'
    answer = f'{{"tool_calls": [{call}, ...]}}' if parallel else f'{{"tool_call": {call}}}'
    if choice.mode == "function":
        call_it = f"Call the tool `{choice.name}`: answer with one JSON object, {answer}."
    elif choice.mode == "required":
        call_it = f"Call {'one or more' if parallel else 'one'} of them: answer with one JSON object, {answer}."
    else:
        call_it = (
            f'Answer with one JSON object: {answer} to call a tool, or {{"response": "<your reply>"}} '
            "to reply to the user."
        )
    return f"You can call these tools (`parameters` is the JSON Schema of a tool's arguments):\n{listing}\n\n{call_it}"


@dataclass(frozen=True)
class ToolPlan:
    """What the model is given for a request with tools, and how its answer is read."""

    style: ToolStyle
    messages: tuple[ChatMessage, ...]  # to render, through the template or the config template
    tools: tuple[ToolSpec, ...]  # for the template to list (native formats); () when the messages already do
    grammar: str | None  # what the answer is held to; None: free text
    reads_calls: bool  # False: tools are not offered (none of them, or `none`): the answer is text

    def parse(self, text: str, seed: str) -> ParsedAnswer:
        """The answer's text and calls; text the format cannot read as calls is the answer's text, whole."""
        if not self.reads_calls:
            return ParsedAnswer(text)
        if self.style is ToolStyle.HERMES:
            return formats.parse_hermes(text, seed)
        if self.style is ToolStyle.LLAMA3:
            return formats.parse_llama(text, seed)
        if self.style is ToolStyle.MISTRAL:
            return formats.parse_mistral(text, seed)
        return _parse_generic(text, seed)

    def stream(self, seed: str) -> ToolStream:
        return ToolStream(self, seed)


class ToolStream:
    """An answer read piece by piece: `feed` gives the text that is known to be the answer's text so far
    (held back: what may yet turn out to be a call, and under the generic format the JSON around the reply);
    `finish` gives the rest of the text and the calls. What it gives adds up to `ToolPlan.parse`'s answer."""

    def __init__(self, plan: ToolPlan, seed: str) -> None:
        self.plan, self.seed = plan, seed
        self._text = ""
        self._sent = ""
        self._body: int | None = None  # generic: where the reply's string begins
        self._end = 0  # generic: how far the reply's characters are read
        self._decoded = ""

    def feed(self, piece: str) -> str:
        self._text += piece
        if not self.plan.reads_calls:
            settled = self._text
        elif self.plan.style is ToolStyle.HERMES:
            settled = formats.tagged_settled(self._text, formats.HERMES_OPEN)
        elif self.plan.style is ToolStyle.MISTRAL:
            settled = formats.tagged_settled(self._text, formats.MISTRAL_CALLS)
        elif self.plan.style is ToolStyle.LLAMA3:
            settled = formats.llama_settled(self._text)
        else:
            settled = self._reply_so_far()
        return self._advance(settled)

    def finish(self, text: str | None = None) -> tuple[str, tuple[ToolCall, ...]]:
        """The rest of the text, and the calls; `text`: the whole answer (a cache hit's), else what was fed."""
        parsed = self.plan.parse(self._text if text is None else text, self.seed)
        return self._advance(parsed.content or ""), parsed.calls

    def _advance(self, settled: str) -> str:
        if not settled.startswith(self._sent):  # never: what is settled only grows
            return ""
        new, self._sent = settled[len(self._sent) :], settled
        return new

    def _reply_so_far(self) -> str:
        if self._body is None:
            opened = RESPONSE_OPEN.match(self._text)
            if opened is None:
                return ""
            self._body = self._end = opened.end()
        end = _string_end(self._text, self._end)
        if end > self._end:
            self._decoded += _decode(self._text[self._end : end])
            self._end = end
        return _clean(self._decoded)


def _parameters(tool: ToolSpec, index: int) -> dict[str, Any]:
    """The tool's parameter schema, checked by converting it alone, so that a fault names its tool."""
    schema: dict[str, Any] = json.loads(tool.parameters)
    json_grammar(schema, f"tools.{index}.function.parameters")
    return schema


def _named_tool_results(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages, each tool result checked to answer a call of the assistant message before it, and named
    after that call's tool (templates and the generic format write the name)."""
    out: list[ChatMessage] = []
    calls: dict[str, str] = {}  # the open calls' ids, to their tools
    for i, message in enumerate(messages):
        if message.role != "tool":
            calls = {call.id: call.name for call in message.tool_calls}
            out.append(message)
        elif message.tool_call_id in calls:
            out.append(replace(message, name=message.name or calls[message.tool_call_id]))
        else:
            raise BadRequest(
                f"messages.{i}: a message whose role is tool must answer a call (`tool_call_id`) of the "
                "assistant message before it.",
                param=f"messages.{i}.tool_call_id",
            )
    return out


def _generic_history(messages: Sequence[ChatMessage], parallel: bool) -> list[ChatMessage]:
    """The history as a template without tool support can take it: an assistant's calls as the JSON the
    generic format answers with, each run of tool results as one user message of `tool_response` objects."""
    out: list[ChatMessage] = []
    results: list[str] = []
    for message in messages:
        if message.role == "tool":
            # no tool_call_id: clients make their own, and an id in the prompt would key the same conversation
            # apart per client run; the order pairs each result with its call
            response = {"tool": message.name, "content": message.content}
            results.append(json.dumps({"tool_response": response}, ensure_ascii=False))
            continue
        if results:
            out.append(ChatMessage("user", "\n".join(results)))
            results = []
        if message.tool_calls:
            written = [{"name": c.name, "arguments": _loaded(c.arguments)} for c in message.tool_calls]
            answer = {"tool_calls": written} if parallel or len(written) > 1 else {"tool_call": written[0]}
            text = json.dumps(answer, ensure_ascii=False)
            out.append(ChatMessage("assistant", f"{message.content}\n\n{text}" if message.content else text))
        else:
            out.append(message)
    if results:
        out.append(ChatMessage("user", "\n".join(results)))
    return out


def _with_system(messages: list[ChatMessage], text: str) -> list[ChatMessage]:
    """`text` after the first system message's, or as a system message of its own before the others."""
    if messages and messages[0].role == "system":
        return [ChatMessage("system", f"{messages[0].content}\n\n{text}"), *messages[1:]]
    return [ChatMessage("system", text), *messages]


def _loaded(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _parse_generic(text: str, seed: str) -> ParsedAnswer:
    reply = _reply(text)
    if reply is not None:
        return ParsedAnswer(reply)
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        return ParsedAnswer(text)
    if isinstance(value, dict):
        written = value.get("tool_calls", [value["tool_call"]] if "tool_call" in value else None)
        if isinstance(written, list) and written:
            calls = [formats.read_call(item, seed, i) for i, item in enumerate(written)]
            if all(call is not None for call in calls):
                return ParsedAnswer(None, tuple(call for call in calls if call is not None))
        if isinstance(value.get("response"), str):
            return ParsedAnswer(_clean(value["response"]))
    return ParsedAnswer(text)


def _reply(text: str) -> str | None:
    """A generic answer that begins as a reply: its text so far (all of it once the string is closed)."""
    opened = RESPONSE_OPEN.match(text)
    if opened is None:
        return None
    return _clean(_decode(text[opened.end() : _string_end(text, opened.end())]))


def _string_end(text: str, i: int) -> int:
    """Where the whole characters of the JSON string body from `i` end: at its closing quote, at an escape
    not yet whole (a surrogate pair is whole only with its second half), or at an escape JSON does not have."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i
        if c != "\\":
            i += 1
            continue
        kind = text[i + 1 : i + 2]
        if kind != "u":
            if not kind or kind not in '"\\/bfnrt':
                return i
            i += 2
            continue
        if not _HEX4.fullmatch(text[i + 2 : i + 6]):
            return i
        if 0xD800 <= int(text[i + 2 : i + 6], 16) < 0xDC00:  # a high surrogate: with its low half, if it has one
            rest = text[i + 6 : i + 12]
            if len(rest) < 6 and _PARTIAL_ESCAPE.fullmatch(rest):
                return i
            if rest[:2] == "\\u" and _HEX4.fullmatch(rest[2:]) and 0xDC00 <= int(rest[2:], 16) < 0xE000:
                i += 6
        i += 6
    return i


def _decode(body: str) -> str:
    return str(json.loads(f'"{body}"', strict=False))


_clean = formats.clean


def argument_pieces(arguments: str, size: int = 24) -> list[str]:
    """A call's arguments in the pieces a stream sends them in; they add up to the arguments."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
