"""One sequence's answer as its tokens come, in pure Python (vLLM's output processor and stop checker):
the bytes of the tokens' pieces, stop strings, max_tokens, the text streamed as it becomes final, and
the log-probabilities of the text returned.

The text follows llama-cpp-python's `create_completion`: the pieces' bytes, cut at the first stop
string (matched on bytes, so one may span tokens), decoded as UTF-8 ignoring errors; except that
max_tokens is a hard cap. What is streamed never holds half a character nor the start of what may
still become a stop string, and adds up to the answer's text.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Callable

from handler.core.types import FinishReason, TokenLogprob


class SequenceOutput:
    """Fed one token at a time by `add`; `text` and `logprobs` give the answer at the end."""

    def __init__(self, stops: list[bytes], max_tokens: int, on_text: Callable[[str], None] | None = None) -> None:
        """`stops`: non-empty byte strings; `on_text`: called with each streamable piece."""
        self.stops = stops
        self.max_tokens = max_tokens
        self.on_text = on_text
        self.data = bytearray()  # bytes of the generated tokens' pieces
        self.n_tokens = 0  # tokens added, stop strings' included
        self.cut: int | None = None  # where a stop string begins in `data`
        self.stop: str | None = None  # the stop string that ended the answer, if one did
        self._strip_space: bool | None = None  # llama-cpp-python's leading-space rule after a BOS, until decided
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._fed = 0  # bytes of `data` handed to the decoder (and streamed)
        self.sent = 0  # characters streamed
        # per token, when log-probabilities are asked for, with where its bytes start in `data`
        self._logprobs: list[tuple[int, TokenLogprob]] = []

    def add(
        self, piece: bytes, *, is_bos: bool = False, logprob: Callable[[bytes], TokenLogprob] | None = None
    ) -> FinishReason | None:
        """One generated token (not an end-of-generation one): its piece, whether it is the BOS token,
        and, for log-probabilities, what makes its entry from the piece as the answer has it. Returns
        why the answer ends here, if it does; else streams what became final (`on_text` may raise)."""
        self.n_tokens += 1
        if self._strip_space is None:  # llama-cpp-python drops a leading space after a generated BOS
            self._strip_space = is_bos
        if self._strip_space and piece:
            if not self.data and piece[:1] == b" ":
                piece = piece[1:]
            self._strip_space = False
        before = len(self.data)
        self.data += piece
        if logprob is not None:
            self._logprobs.append((before, logprob(piece)))
        if self.stops:
            # only where this piece could complete one: from len(stop) - 1 bytes before it
            found = [(i, s) for s in self.stops if (i := self.data.find(s, max(0, before - len(s) + 1))) >= 0]
            if found:
                self.cut, stop = min(found)
                self.stop = stop.decode("utf-8")
                return FinishReason.STOP
        if self.n_tokens >= self.max_tokens:
            return FinishReason.LENGTH
        self._stream()
        return None

    def _stream(self) -> None:
        """Hand on what can no longer change: whole characters, short of any stop string's start."""
        on_text = self.on_text
        if on_text is None:
            return
        data = self.data
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(data)), hold, -1):
                if data.endswith(s[:k]):
                    hold = k
                    break
        safe = len(data) - hold
        if safe <= self._fed:
            return
        text = self._decoder.decode(bytes(data[self._fed : safe]))
        self._fed = safe
        if text:
            self.sent += len(text)
            on_text(text)

    def text(self) -> str:
        """The answer: the bytes up to a stop string, as UTF-8 ignoring errors."""
        data = self.data if self.cut is None else self.data[: self.cut]
        return bytes(data).decode("utf-8", errors="ignore")

    def flush(self, text: str) -> None:
        """At the end: stream the rest of the answer `text` (held-back stop prefixes that never completed,
        a last token's piece). `on_text` may raise."""
        if self.on_text is not None and len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)

    def logprobs(self) -> tuple[TokenLogprob, ...]:
        """One entry per token of the text: a stop string's tokens go, and the token it begins in keeps
        only its bytes before it, so that the entries' bytes are the answer's."""
        if self.cut is None:
            return tuple(entry for _, entry in self._logprobs)
        cut = self.cut
        return tuple(
            entry if start + len(entry.token) <= cut else dataclasses.replace(entry, token=entry.token[: cut - start])
            for start, entry in self._logprobs
            if start < cut
        )
