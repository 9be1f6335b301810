"""Values that cross layers: what a generation is asked for, what it gives back, and where an answer came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached
    TIME_LIMIT = "time_limit"  # the deadline passed
    CANCELLED = "cancelled"  # the caller went away
    ERROR = "error"  # the service failed it after the answer had begun (a stream's 200 already sent)


# Answers cut short are never cached: they are not the answer to the request.
INCOMPLETE = frozenset({FinishReason.TIME_LIMIT, FinishReason.CANCELLED, FinishReason.ERROR})

# (token id, bias added to its logit), sorted by id: hashable, and one spelling per meaning for the cache key
LogitBias = tuple[tuple[int, float], ...]


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
    # Every stop string of the generation: where the input brings its own, `ModelInput.sampling` adds them.
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # A llama.cpp grammar (GBNF, root rule `root`) every token must follow: structured output.
    grammar: str | None = None
    logit_bias: LogitBias | None = None  # None rather than (): the same request is the same key
    # None: no log-probabilities; n: the sampled token's and the n most likely tokens' at each step
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its bytes in the answer, its log-probability under the model (before any
    bias, penalty, grammar or temperature), and the most likely tokens at that step, most likely first."""

    token: bytes  # may be part of a UTF-8 character: byte tokens split them
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


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
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token of the text, when the request asked
    adapter_identity: str | None = field(default=None, compare=False)  # the LoRA adapter it was made with, if any
    stop: str | None = None  # the stop string that ended it, if one did (Anthropic's stop_sequence)

    @property
    def tokens_per_second(self) -> float | None:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else None


@dataclass(frozen=True)
class Choices:
    """The answers to one request for several choices (OpenAI's `n`), in order: cached as one answer."""

    completions: tuple[Completion, ...]


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request for several: the request's seed plus the index, in 32 bits
    (what llama.cpp's sampler takes)."""
    return (seed + index) & 0xFFFFFFFF


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter a request asks for, by its configured name, and the scale it is applied at."""

    name: str
    scale: float = 1.0


# One embedding input: a text, or token ids of the model's own vocabulary, embedded as they are.
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True)
class Embedding:
    """One input's embedding vector, as the model computed it (pooled, and normalized where configured)."""

    vector: tuple[float, ...]
    prompt_tokens: int
    model_identity: str | None = field(default=None, compare=False)  # the model that computed it; None on a hit


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool (a function) the model made, or an assistant message of the history made."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


NO_PARAMETERS = '{"type":"object","properties":{}}'  # the parameters of a function that takes none


@dataclass(frozen=True)
class ToolSpec:
    """A tool (a function) the model may call: its name, what it does, and its arguments' JSON Schema."""

    name: str
    description: str | None = None
    parameters: str = NO_PARAMETERS  # JSON text: hashable, one spelling per schema

    def as_openai(self) -> dict[str, object]:
        """`{"type": "function", "function": {...}}`, as OpenAI's requests (and chat templates) write a tool."""
        function: dict[str, object] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = json.loads(self.parameters)
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user, assistant or tool
    content: str  # "" for an assistant message that only calls tools
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a tool message: the tool that answered


@dataclass(frozen=True)
class Segment:
    """A piece of the model's input text: template markup, whose control-token text is parsed into
    control tokens (`special`), or what a user wrote, which is only ever text."""

    text: str
    special: bool


@dataclass(frozen=True)
class ModelInput:
    """Exactly what the model sees: its input text in segments, and the stop strings that come with
    the way it was formatted (a chat template's end-of-sequence text, the config template's `Human:`)."""

    segments: tuple[Segment, ...]
    stop: tuple[str, ...] = ()
    add_bos: bool = True  # False where a chat template writes the begin-of-sequence token itself

    @classmethod
    def text(cls, text: str, *, special: bool = False, stop: tuple[str, ...] = ()) -> ModelInput:
        return cls((Segment(text, special),), stop)

    @property
    def full_text(self) -> str:
        return "".join(segment.text for segment in self.segments)

    def with_stops(self, requested: SamplingParams) -> SamplingParams:
        """The parameters a generation of this input runs with and its cache key is made of, decided here
        once for both: the request's stop strings, then this input's own, each once (one spelling per
        meaning: stopping at a string twice is stopping at it)."""
        stops = tuple(dict.fromkeys(s for s in (*requested.stop, *self.stop) if s))
        return requested if stops == requested.stop else replace(requested, stop=stops)

    def key_material(self) -> str:
        """The text as the model sees it; the stops join the key through `with_stops`."""
        return json.dumps(
            {"segments": [[s.text, s.special] for s in self.segments], "add_bos": self.add_bos},
            ensure_ascii=False,
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages, and the whole prompt for a model without a chat template; which of the two
    applies is known from the model file's metadata."""

    messages: tuple[ChatMessage, ...]
    fallback: ModelInput
    tools: tuple[ToolSpec, ...] = ()  # for a chat template that lists tools itself (none: it is not given any)


Prompt = ModelInput | ChatPrompt
