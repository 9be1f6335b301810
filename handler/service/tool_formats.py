"""The native tool-call formats of chat templates, as llama.cpp's `common/chat.cpp` reads them: each one's
answers read back as calls, what of a partial answer is known to be text, and the grammar a call is held to.

- **hermes** (Qwen 2.5, Hermes 2 Pro and 3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  blocks after any text.
- **llama3** (Llama 3.1 to 3.3): one JSON object `{"name": ..., "parameters": {...}}` as the whole answer
  (`"type": "function"` may come first), or after `<|python_tag|>` (text before the tag is the answer's text).
- **mistral** (Mistral Nemo, Small, Large): `[TOOL_CALLS]` and a JSON list of `{"name", "arguments"}`
  after any text; newer ones write `[TOOL_CALLS]name[ARGS]{...}` (`[CALL_ID]id` may come before `[ARGS]`),
  once per call. Its templates want 9-character alphanumeric call ids in the history (`mistral_history`).

Pure, except that grammars come from llama-cpp-python's converter (handler.engine.grammar).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from handler.core.types import ChatMessage, ToolCall, ToolSpec
from handler.engine.grammar import framed_grammar, json_grammar

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_MISTRAL_NAMED = re.compile(r"([a-zA-Z0-9_-]{1,64})(?:\[CALL_ID\][a-zA-Z0-9]+)?\[ARGS\]")
_WS = " \t\n\r"  # JSON's whitespace
_DECODER = json.JSONDecoder(strict=False)


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer read back: its text (None when it only calls tools), and its calls."""

    content: str | None
    calls: tuple[ToolCall, ...] = ()


def call_id(seed: str, index: int) -> str:
    """A call's id: `call_` and hex, the same for the same answer to the same request (seed: the response's id)."""
    return "call_" + hashlib.sha256(f"{seed}/{index}".encode()).hexdigest()[:24]


def clean(text: str) -> str:
    """Lone surrogates (JSON can escape them; no UTF-8 answer can carry them) as U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_call(value: object, seed: str, index: int, key: str = "arguments") -> ToolCall | None:
    """`{"name": ..., key: ...}` as a call (no `key`: no arguments); None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(key, {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return ToolCall(call_id(seed, index), value["name"], clean(text))


def call_schema(tools: Sequence[ToolSpec], parameters: list[dict[str, Any]], key: str = "arguments") -> dict[str, Any]:
    """One call of any of `tools`: its name first, then its arguments under `key`."""
    each = [
        {"type": "object", "properties": {"name": {"const": tool.name}, key: schema}, "required": ["name", key]}
        for tool, schema in zip(tools, parameters, strict=True)
    ]
    return each[0] if len(each) == 1 else {"anyOf": each}


def hermes_grammar(call: dict[str, Any], parallel: bool) -> str:
    return framed_grammar(call, HERMES_OPEN + "\n", "\n" + HERMES_CLOSE, repeat=parallel, param="tools")


def llama_grammar(call: dict[str, Any]) -> str:
    """One `{"name": ..., "parameters": ...}` object (`call`, from `call_schema(..., "parameters")`): Llama 3's
    templates take one call a turn, so parallel calls are not asked for."""
    return json_grammar(call, "tools")


def mistral_grammar(call: dict[str, Any], parallel: bool) -> str:
    """`[TOOL_CALLS]` and a list of calls (`call`: from `call_schema`), of one unless `parallel`."""
    calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not parallel:
        calls["maxItems"] = 1
    return framed_grammar(calls, MISTRAL_CALLS, "", repeat=False, param="tools")


def parse_hermes(text: str, seed: str) -> ParsedAnswer:
    """`<tool_call>` blocks after the text, each a JSON call; the text before them is the answer's text
    (without its trailing whitespace). If any block does not read as a call, the whole answer is text."""
    start = text.find(HERMES_OPEN)
    if start < 0:
        return ParsedAnswer(text)
    calls: list[ToolCall] = []
    position = start
    while True:
        position = _skip_space(text, position)
        if not text.startswith(HERMES_OPEN, position):
            break
        try:
            value, position = _DECODER.raw_decode(text, _skip_space(text, position + len(HERMES_OPEN)))
        except ValueError:
            return ParsedAnswer(text)
        call = read_call(value, seed, len(calls))
        if call is None:
            return ParsedAnswer(text)
        calls.append(call)
        position = _skip_space(text, position)
        if text.startswith(HERMES_CLOSE, position):
            position += len(HERMES_CLOSE)
        elif position < len(text):
            return ParsedAnswer(text)
    return ParsedAnswer(text[:start].rstrip() or None, tuple(calls))


def parse_llama(text: str, seed: str) -> ParsedAnswer:
    """A call object as the whole answer, or calls after `<|python_tag|>` (several: `;` or whitespace apart).
    If they do not read as calls (`name` and `parameters`), the whole answer is text."""
    tag = text.find(PYTHON_TAG)
    if tag >= 0:
        start, content = tag + len(PYTHON_TAG), text[:tag].rstrip() or None
    elif text.lstrip(_WS).startswith("{"):
        start, content = 0, None
    else:
        return ParsedAnswer(text)
    calls: list[ToolCall] = []
    position = _skip_space(text, start)
    while position < len(text):
        try:
            value, position = _DECODER.raw_decode(text, position)
        except ValueError:
            return ParsedAnswer(text)
        typed = isinstance(value, dict) and "parameters" in value and value.get("type", "function") == "function"
        call = read_call(value, seed, len(calls), "parameters") if typed else None
        if call is None:
            return ParsedAnswer(text)
        calls.append(call)
        position = _skip_space(text, position)
        if text.startswith(";", position):
            position = _skip_space(text, position + 1)
    return ParsedAnswer(content, tuple(calls)) if calls else ParsedAnswer(text)


def parse_mistral(text: str, seed: str) -> ParsedAnswer:
    """`[TOOL_CALLS]` and a JSON list of calls, or `[TOOL_CALLS]name[ARGS]{...}` once per call, after the
    answer's text (without its trailing whitespace). If they do not read as calls, the whole answer is text."""
    start = text.find(MISTRAL_CALLS)
    if start < 0:
        return ParsedAnswer(text)
    calls: list[ToolCall] = []
    position = start
    while position < len(text):
        if not text.startswith(MISTRAL_CALLS, position):
            return ParsedAnswer(text)
        position = _skip_space(text, position + len(MISTRAL_CALLS))
        named = _MISTRAL_NAMED.match(text, position)
        try:
            value, position = _DECODER.raw_decode(text, named.end() if named else position)
        except ValueError:
            return ParsedAnswer(text)
        if named:
            value = [{"name": named.group(1), "arguments": value}]
        if not isinstance(value, list) or not value:
            return ParsedAnswer(text)
        for item in value:
            call = read_call(item, seed, len(calls))
            if call is None:
                return ParsedAnswer(text)
            calls.append(call)
        position = _skip_space(text, position)
    return ParsedAnswer(text[:start].rstrip() or None, tuple(calls))


def tagged_settled(text: str, tag: str) -> str:
    """What is known to be the answer's text where calls follow `tag` (hermes, mistral): the text before any
    `tag` (or the start of one), without trailing whitespace (dropped if a call follows)."""
    start = text.find(tag)
    if start < 0:
        start = len(text) - next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:n])), 0)
    return text[:start].rstrip()


def llama_settled(text: str) -> str:
    """As `tagged_settled` with `<|python_tag|>`, and nothing of an answer that begins as a JSON object
    (it may be a call)."""
    if text.lstrip(_WS).startswith("{"):
        return ""
    return tagged_settled(text, PYTHON_TAG)


def mistral_history(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The history with each call's id (and the tool result's `tool_call_id` that answers it) as 9 letters and
    digits, the only ids Mistral's templates take; the same id gives the same short one."""
    return [
        replace(
            m,
            tool_calls=tuple(replace(c, id=_short_id(c.id)) for c in m.tool_calls),
            tool_call_id=None if m.tool_call_id is None else _short_id(m.tool_call_id),
        )
        for m in messages
    ]


def _short_id(identifier: str) -> str:
    if re.fullmatch(r"[a-zA-Z0-9]{9}", identifier):
        return identifier
    digest = int.from_bytes(hashlib.sha256(identifier.encode()).digest()[:8], "big")
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(letters[(digest // 62**i) % 62] for i in range(9))


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i
