"""Values that cross layers: what a generation is asked for, what it gives back, and where an answer came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached
    TIME_LIMIT = "time_limit"  # the deadline passed
    CANCELLED = "cancelled"  # the caller went away


# Answers cut short are never cached: they are not the answer to the request.
INCOMPLETE = frozenset({FinishReason.TIME_LIMIT, FinishReason.CANCELLED})


class CacheSource(StrEnum):
    """Where an answer came from, as the X-Cache header says it."""

    HIT_MEMORY = "HIT-MEMORY"
    HIT_DISK = "HIT-DISK"
    HIT_SHARED = "HIT-SHARED"
    MISS = "MISS"

    @property
    def hit(self) -> bool:
        return self is not CacheSource.MISS


@dataclass(frozen=True)
class SamplingParams:
    """What, besides the prompt, decides the answer of one generation."""

    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass(frozen=True)
class Completion:
    """A finished answer, as the model wrote it (not stripped), with what a cache entry and usage need."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # How this answer was made, for logs and metrics; not cached (a hit made nothing).
    generation_seconds: float = field(default=0.0, compare=False)
    load_seconds: float | None = field(default=None, compare=False)  # set when this request loaded the model
    model_identity: str | None = field(default=None, compare=False)  # the model that generated it; None on a hit

    @property
    def tokens_per_second(self) -> float | None:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else None


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user or assistant
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages, and the whole prompt for a model without a chat template."""

    messages: tuple[ChatMessage, ...]
    fallback: str
    fallback_stop: tuple[str, ...]  # config's stop strings, which belong to the fallback template

    def key_material(self) -> str:
        return json.dumps(
            {
                "messages": [asdict(m) for m in self.messages],
                "fallback": self.fallback,
                "fallback_stop": self.fallback_stop,
            },
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )


Prompt = str | ChatPrompt  # a raw prompt, or chat messages to format once the model is known
