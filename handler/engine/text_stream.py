"""Text that is safe to send while a generation runs: whole UTF-8 characters, never a stop string's start.

llama-cpp-python's own `stream=True` decodes each chunk on its own and drops a character whose
bytes straddle two chunks (seen with byte-fallback tokens), so a streamed answer could differ from
the same answer whole. Here the tokens are observed from the stopping-criterion hook of the one
ordinary generation, decoded incrementally, and the end of the stream is taken from the finished
answer itself: the pieces always add up to exactly the answer a non-streamed request gets.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class TextStream:
    def __init__(self, llama: Any, prompt_tokens: int, stop: Sequence[str], on_text: Callable[[str], None]) -> None:
        self.llama = llama
        self.prompt_tokens = prompt_tokens
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")  # as llama-cpp-python decodes
        self._tokens = 0  # generated tokens decoded so far
        self._text = ""  # their text
        self._sent = 0  # characters of it already handed on

    def feed(self, input_ids: Sequence[int]) -> None:
        """Called with the prompt and the tokens generated so far (the newest one comes next call)."""
        new = list(input_ids[self.prompt_tokens + self._tokens :])
        if not new:
            return
        self._tokens += len(new)
        self._text += self._decoder.decode(self.llama.detokenize(new))
        safe = self._safe_length()
        if safe > self._sent:
            self.on_text(self._text[self._sent : safe])
            self._sent = safe

    def _safe_length(self) -> int:
        """Up to where the text cannot change: before any stop string, or any start of one at the end."""
        safe = len(self._text)
        for stop in self.stop:
            found = self._text.find(stop, max(0, self._sent - len(stop)))
            if found != -1:
                safe = min(safe, found)
                continue
            for k in range(min(len(stop) - 1, len(self._text)), 0, -1):
                if self._text.endswith(stop[:k]):
                    safe = min(safe, len(self._text) - k)
                    break
        return safe

    def finish(self, text: str) -> None:
        """Send what remains of the finished answer."""
        sent = self._text[: self._sent]
        if not text.startswith(sent):  # cannot happen by construction; the log says so if it ever does
            log.error("streamed text is not a prefix of the answer", extra={"sent_chars": len(sent)})
            return
        if len(text) > len(sent):
            self.on_text(text[len(sent) :])
