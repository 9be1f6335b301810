"""Chat messages into tokens with the GGUF's own chat template (`tokenizer.chat_template`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from handler.core.errors import BadRequest
from handler.core.types import ChatMessage

if TYPE_CHECKING:
    from llama_cpp import Llama


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
            as_dicts: list[Any] = [asdict(m) for m in messages]
            result = self.formatter(messages=as_dicts)
        except ValueError as exc:  # the template's raise_exception(): these messages do not fit it
            raise BadRequest(f"The model's chat template refused these messages: {exc}") from exc
        tokens = self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stop: Any = result.stop or ()
        return RenderedChat(tokens, tuple([stop] if isinstance(stop, str) else stop))


def token_text(llama: Llama, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace") if token != -1 else ""
