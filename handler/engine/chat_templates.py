"""Each model's chat template, compiled once, and chat messages rendered through it.

The template is read from the GGUF header of the model an identity names: the loaded file when it is
that model, else what the source knows of it (a digest record) or the file at the source. Importing
this module does not import jinja2: a model without a template, or a request without messages,
never pays for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from handler.core.errors import ModelUnavailable
from handler.core.types import ChatPrompt, ModelInput
from handler.engine.model_files.gguf_header import ChatMetadata, read_chat_metadata
from handler.engine.model_files.source import ModelSource, OpenedModel

if TYPE_CHECKING:
    from handler.engine.chat_format import ChatTemplate


class ChatTemplates:
    """The compiled templates by model identity (None: that model has none)."""

    def __init__(self, source: ModelSource, loaded: Callable[[], OpenedModel | None]) -> None:
        self.source = source
        self._loaded = loaded  # the file the engine runs now, if any
        self._templates: dict[str, ChatTemplate | None] = {}
        self._lock = threading.Lock()

    def known_input(self, prompt: ChatPrompt, identity: str) -> ModelInput | None:
        """The model input for chat messages when the model's template is at hand; None otherwise."""
        if identity not in self._templates:
            return None
        return _render(prompt, self._templates[identity])

    def model_input(self, prompt: ChatPrompt, identity: str) -> ModelInput:
        """Chat messages formatted by the model's own template, or the config template's prompt. Blocking:
        reads the model's header the first time. Raises ModelUnavailable, BadRequest (messages the
        template refuses)."""
        return _render(prompt, self._template(identity))

    def template_source(self, identity: str) -> str | None:
        """The model's chat template text (None: it has none). Blocking: reads the model's header the first
        time. Raises ModelUnavailable."""
        template = self._template(identity)
        return None if template is None else template.source

    def _template(self, identity: str) -> ChatTemplate | None:
        if identity in self._templates:
            return self._templates[identity]
        opened = self._loaded()
        if opened is not None and opened.identity == identity:
            metadata = read_chat_metadata(opened.path)
        else:
            try:
                metadata = self.source.known_chat(identity) or read_chat_metadata(self.source.header_path())
            except ModelUnavailable:
                if opened is None:
                    raise
                # The file there now is not a model: the loaded one answers meanwhile, with its template.
                return self._template(opened.identity)
        template = _compile(metadata)
        with self._lock:
            return self._templates.setdefault(identity, template)


def _compile(metadata: ChatMetadata) -> ChatTemplate | None:
    if not metadata.template:
        return None
    from handler.engine.chat_format import ChatTemplate  # jinja2, only for models that have a template

    return ChatTemplate(metadata, metadata.template)


def _render(prompt: ChatPrompt, template: ChatTemplate | None) -> ModelInput:
    return prompt.fallback if template is None else template.render(prompt.messages, prompt.tools)
