"""Chat messages into the model's prompt: the GGUF's own chat template when it has one, the
operator's `System/Human/Assistant` template from config otherwise.

Which of the two applies is known only once the model is loaded, but the cache key must be
computed without loading it: a `ChatPrompt` carries the messages and the fallback prompt, and
both go into the key. The model file's identity (also in the key) fixes its template.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from handler.config import Settings
from handler.errors import BadRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

ROLE_LABELS = {"user": "Human", "assistant": "Assistant"}


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user or assistant
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    messages: tuple[ChatMessage, ...]
    fallback: str  # the whole prompt for a model without a chat template
    fallback_stop: tuple[str, ...]  # config's stop strings, which belong to the fallback template

    def key_material(self) -> str:
        return json.dumps(
            {"messages": [asdict(m) for m in self.messages], "fallback": self.fallback,
             "fallback_stop": self.fallback_stop},
            sort_keys=True, ensure_ascii=False, separators=(",", ":"),
        )


def chat_prompt(settings: Settings, messages: list[ChatMessage]) -> ChatPrompt:
    """The fallback writes earlier turns as `Human:`/`Assistant:` lines inside the template's {prompt},
    so that one user message gives exactly the prompt `/chat` gives."""
    if not messages or messages[-1].role != "user":
        raise BadRequest("messages must end with a message whose role is user.")
    systems = [m.content for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    lines = [f"{ROLE_LABELS[m.role]}: {m.content}" for m in turns]
    conversation = "\n\n".join(lines).removeprefix(f"{ROLE_LABELS['user']}: ")  # the template writes it
    fallback = settings.prompt_template.format(
        system_prompt="\n\n".join(systems) if systems else settings.system_prompt, prompt=conversation
    )
    return ChatPrompt(tuple(messages), fallback, tuple(settings.stop))


@dataclass(frozen=True)
class RenderedChat:
    tokens: list[int]
    stop: tuple[str, ...]


class ChatTemplate:
    """The GGUF's `tokenizer.chat_template`, rendered the way llama-cpp-python's own chat handler does."""

    def __init__(self, llama: Llama, template: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = llama
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(llama, llama.token_eos()),
            bos_token=token_text(llama, llama.token_bos()),
        )

    @classmethod
    def of(cls, llama: Llama) -> ChatTemplate | None:
        template = (getattr(llama, "metadata", None) or {}).get("tokenizer.chat_template")
        return cls(llama, template) if template else None

    def render(self, messages: tuple[ChatMessage, ...]) -> RenderedChat:
        try:
            result = self.formatter(messages=[asdict(m) for m in messages])
        except ValueError as exc:  # the template's raise_exception(): these messages do not fit it
            raise BadRequest(f"The model's chat template refused these messages: {exc}") from exc
        tokens = self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stop: Any = result.stop or ()
        return RenderedChat(tokens, tuple([stop] if isinstance(stop, str) else stop))


def token_text(llama: Llama, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace") if token != -1 else ""
