"""Prompt-lookup drafts (llama-server's `ngram-simple`, vLLM's `[ngram]`): a sequence whose last n tokens
occurred earlier in its own context (prompt or answer so far) proposes the tokens that followed them
there, and the scheduler verifies them in the same llama_decode as everything else. An answer that
quotes its prompt (a summary, an extraction, a code edit, JSON repeating its input) then advances
several tokens per step; a wrong draft costs only the cells dropped after it.

Verifying is sampling: each draft is checked against the token the sequence's own sampler chain draws
from the logits before it, in order, so the answer is the one decoding without drafts gives, greedy or
not. Pure Python, no llama.cpp.
"""

from __future__ import annotations

PAUSE_AFTER_MISSES = 2  # drafts in a row with nothing accepted before a sequence pauses drafting
LONGEST_PAUSE = 64  # steps


class NgramIndex:
    """Where each n-gram of a context last occurred, kept as the context grows one token at a time."""

    def __init__(self, tokens: list[int], n: int) -> None:
        self.n = n
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token that followed it
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        tokens, n = self.tokens, self.n
        if len(tokens) >= n:
            self._after[tuple(tokens[-n:])] = len(tokens)
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the context's last n tokens."""
        if limit <= 0 or len(self.tokens) <= self.n:
            return []
        start = self._after.get(tuple(self.tokens[-self.n :]))
        return [] if start is None else self.tokens[start : start + limit]


class Drafter:
    """One sequence's drafts, pausing where they keep failing, so a workload that never quotes its
    prompt stops paying for verification after a couple of steps."""

    def __init__(self, tokens: list[int], n: int, draft_max: int) -> None:
        self.index = NgramIndex(tokens, n)
        self.draft_max = draft_max
        self._misses = 0
        self._paused = 0  # steps left without drafting

    def append(self, token: int) -> None:
        self.index.append(token)

    def draft(self, limit: int) -> list[int]:
        if self._paused:
            self._paused -= 1
            return []
        return self.index.draft(min(limit, self.draft_max))

    def verified(self, proposed: int, accepted: int) -> None:
        if accepted:
            self._misses = 0
            return
        self._misses += 1
        if self._misses >= PAUSE_AFTER_MISSES:
            self._paused = min(LONGEST_PAUSE, 2 ** (self._misses + 1))
