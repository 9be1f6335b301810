"""Chat messages into the model's input with the GGUF's own chat template (`tokenizer.chat_template`).

Rendered as llama-cpp-python renders it (the same Jinja2 environment and functions), but here, before
any cache lookup: the key is the text the model will see, so a template that writes today's date
keys by the date. What the messages' authors wrote is marked as text, so that control-token text in
it never becomes a control token; the template's own markup is parsed as the template means it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from handler.core.errors import BadRequest
from handler.core.types import ChatMessage, ModelInput, Segment, ToolSpec
from handler.engine.model_files.gguf_header import ChatMetadata


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HuggingFace's `{% generation %}` tag, passed through (as llama-cpp-python and Transformers do)."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's own class attribute

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


class ChatTemplate:
    def __init__(self, metadata: ChatMetadata, template: str) -> None:
        self.metadata = metadata
        self.source = template  # what decides how tools are called through it (handler.service.tool_calls)
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        self._template = environment.from_string(template)

    def render(self, messages: tuple[ChatMessage, ...], tools: tuple[ToolSpec, ...] = ()) -> ModelInput:
        """`tools`: given to the template (as OpenAI writes them) for a template that lists them itself."""
        try:
            text = self._template.render(
                messages=[template_message(m) for m in messages],
                eos_token=self.metadata.eos_token,
                bos_token=self.metadata.bos_token,
                raise_exception=_raise_exception,
                add_generation_prompt=True,
                functions=None,
                function_call=None,
                tools=[tool.as_openai() for tool in tools] or None,
                tool_choice=None,
                strftime_now=_strftime_now,
            )
        except (ValueError, jinja2.TemplateError) as exc:  # raise_exception(): these messages do not fit it
            raise BadRequest(f"The model's chat template refused these messages: {exc}") from exc
        # The template writes the begin-of-sequence token itself, as llama-cpp-python's chat handler assumes.
        return ModelInput(_segments(text, messages), stop=(self.metadata.eos_token,), add_bos=False)


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it: OpenAI's shape, with only the fields it has (templates test
    `'tool_calls' in message`), and each call's arguments as an object (templates write them `| tojson`)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # as the caller sent it


def _segments(text: str, messages: tuple[ChatMessage, ...]) -> tuple[Segment, ...]:
    """The rendered text, with each message's content (where the template wrote it, in order) marked
    as text. A content the template rewrote beyond recognition stays unmarked only if it holds no
    angle bracket, the mark of every control token's text; otherwise the request is refused."""
    segments: list[Segment] = []
    position = 0
    for message in messages:
        content = message.content
        found = text.find(content, position) if content else -1
        if found == -1 and content.strip():
            content = content.strip()  # templates commonly trim
            found = text.find(content, position)
        if found == -1:
            if "<" in message.content or "[" in message.content:
                raise BadRequest(
                    f"The model's chat template rewrites {message.role} messages, so control-token text in them "
                    "cannot be kept as plain text; remove '<' and '[' from the message."
                )
            continue
        if found > position:
            segments.append(Segment(text[position:found], special=True))
        segments.append(Segment(content, special=False))
        position = found + len(content)
    if position < len(text):
        segments.append(Segment(text[position:], special=True))
    return tuple(s for s in segments if s.text)
