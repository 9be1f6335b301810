"""llama.cpp grammars for structured output: any JSON object, or the JSON a schema describes.

Imports llama_cpp only when called: only a request that asks for structured output does.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from handler.core.errors import BadRequest

# llama-cpp-python's converter lets a JSON string hold raw control characters, which JSON forbids (a parser
# refuses them): its string character rule, and the one llama.cpp's own converter and JSON_GBNF use.
LOOSE_STRING_CHAR = 'char ::= [^"\\\\] |'
STRICT_STRING_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def json_grammar(schema: dict[str, Any] | None) -> str:
    """Any JSON object (llama-cpp-python's JSON_GBNF, which it uses for `json_object`), or the JSON `schema`
    describes, by llama-cpp-python's converter.
    Raises BadRequest (param `response_format`) with the converter's message for a schema it cannot handle."""
    if schema is None:
        from llama_cpp import llama_grammar

        return str(llama_grammar.JSON_GBNF)
    return _schema_grammar(json.dumps(schema, sort_keys=False, ensure_ascii=False))


@functools.lru_cache(maxsize=64)  # a client sends the same schema again and again
def _schema_grammar(schema: str) -> str:
    from llama_cpp import llama_grammar

    try:
        grammar = str(llama_grammar.json_schema_to_gbnf(schema))
    # the converter fails with whatever a malformed part makes it meet; -O turns its asserts into KeyErrors
    except (ValueError, AssertionError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        message = (str(exc) or type(exc).__name__).replace(" (use --allow-fetch for force)", "")  # a CLI's hint
        raise BadRequest(
            f"The JSON schema in response_format cannot be turned into a grammar: {message}", param="response_format"
        ) from None
    return grammar.replace(LOOSE_STRING_CHAR, STRICT_STRING_CHAR)
