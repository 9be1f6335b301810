"""llama.cpp grammars for structured output and tool calls: any JSON object, or the JSON a schema describes
(alone, or between a chat format's literal tags).

Imports llama_cpp only when called: only a request that asks for structured output or tool calls does.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from handler.core.errors import BadRequest

# llama-cpp-python's converter lets a JSON string hold raw control characters, which JSON forbids (a parser
# refuses them): its string character rule, and the one llama.cpp's own converter and JSON_GBNF use.
LOOSE_STRING_CHAR = 'char ::= [^"\\\\] |'
STRICT_STRING_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def json_grammar(schema: dict[str, Any] | None, param: str = "response_format") -> str:
    """Any JSON object (llama-cpp-python's JSON_GBNF, which it uses for `json_object`), or the JSON `schema`
    describes, by llama-cpp-python's converter.
    Raises BadRequest (naming `param`, the request field the schema came from) with the converter's
    message for a schema it cannot handle."""
    if schema is None:
        from llama_cpp import llama_grammar

        return str(llama_grammar.JSON_GBNF)
    try:
        return _schema_grammar(json.dumps(schema, sort_keys=False, ensure_ascii=False))
    except _Unconvertible as exc:
        raise BadRequest(f"The JSON schema in {param} cannot be turned into a grammar: {exc}", param=param) from None


def framed_grammar(schema: dict[str, Any], prefix: str, suffix: str, *, repeat: bool, param: str) -> str:
    """The JSON `schema` describes, between the literal texts `prefix` and `suffix` (a chat format's tool
    call tags, say); with `repeat`, one or more of those, a newline apart. Raises as `json_grammar`."""
    inner = ROOT_NAME.sub(FRAMED_NAME, json_grammar(schema, param))
    frame = f"{_literal(prefix)} {FRAMED_NAME} {_literal(suffix)}"
    root = f"root ::= {frame} ({_literal(chr(10))} {frame})*" if repeat else f"root ::= {frame}"
    return f"{root}\n{inner}"


ROOT_NAME = re.compile(r"(?<![\w-])root(?![\w-])")  # the rule, where it is defined and where used
FRAMED_NAME = "framed-value"


def _literal(text: str) -> str:
    """A GBNF string literal: its escapes (backslash, quote, \\n, \\uXXXX) are JSON's."""
    return json.dumps(text)


class _Unconvertible(Exception):
    """The converter failed on a schema; the message says why."""


@functools.lru_cache(maxsize=64)  # a client sends the same schema again and again
def _schema_grammar(schema: str) -> str:
    from llama_cpp import llama_grammar

    try:
        grammar = str(llama_grammar.json_schema_to_gbnf(schema))
    # the converter fails with whatever a malformed part makes it meet; -O turns its asserts into KeyErrors
    except (ValueError, AssertionError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        message = (str(exc) or type(exc).__name__).replace(" (use --allow-fetch for force)", "")  # a CLI's hint
        raise _Unconvertible(message) from None
    return grammar.replace(LOOSE_STRING_CHAR, STRICT_STRING_CHAR)
