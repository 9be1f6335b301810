"""Requests, slots and sequences, and the bookkeeping of the KV pool they share (llama-server's slots,
vLLM's KV cache manager), without llama.cpp: its memory calls come through `KVMemory`.

- A slot is a llama.cpp seq_id; a sequence is one request running in a slot.
- The KV cells a request may ever need (prompt + max_tokens) are reserved when it is admitted, so
  llama_decode never runs out of room: a request that does not fit waits until running ones finish.
- When a sequence finishes, its cells stay in its slot as a prompt cache (llama-server's cache_prompt):
  a later request sharing a prefix with them decodes only the rest, or copies the prefix from another
  slot that holds it. Idle cached cells are evicted, least recently used first, whenever a new
  reservation needs the room.
- Cells record the LoRA adapter set they were computed under, and serve only a request under the same
  one (the keys and values depend on it).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from handler.core.types import FinishReason, SamplingParams
from handler.engine.contract import Generated
from handler.engine.output import SequenceOutput
from handler.engine.speculation import Drafter

# (adapter file, scale) a sequence decodes under; None: the model alone
LoraSet = tuple[str, float] | None


class KVMemory(Protocol):
    """The llama.cpp memory the slots' cells live in (`LlamaContext`)."""

    n_ctx: int
    n_swa: int
    stateful: bool
    swa_full: bool

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool: ...

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def seq_pos_min(self, seq_id: int) -> int: ...


@dataclass(eq=False)
class Request:
    tokens: list[int]
    params: SamplingParams
    deadline: float | None
    cancelled: threading.Event | None
    on_text: Callable[[str], None] | None
    future: Future[Generated]
    stops: list[bytes]  # non-empty stop strings, matched on bytes as llama-cpp-python does
    lora: LoraSet = None
    submitted: float = field(default_factory=time.perf_counter)
    # set once the prompt's cells are all in the KV cache: a request for several choices admits the others
    # then, and they copy these cells rather than decode the prompt again (`SlotTable.place`)
    prompt_decoded: threading.Event | None = None

    @classmethod
    def new(
        cls,
        tokens: list[int],
        params: SamplingParams,
        deadline: float | None,
        cancelled: threading.Event | None,
        on_text: Callable[[str], None] | None,
        lora: LoraSet,
        *,
        pool: int,
    ) -> Request:
        """With a future of its own; `tokens` copied, `lora`'s scale a float. Raises ValueError for a
        request that can never fit a KV pool of `pool` cells."""
        if not tokens:
            raise ValueError("the prompt has no tokens")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {params.max_tokens}")
        if len(tokens) + params.max_tokens > pool:
            raise ValueError(
                f"{len(tokens)} prompt tokens + max_tokens {params.max_tokens} exceed the context of {pool} tokens"
            )
        stops = [s.encode("utf-8") for s in params.stop if s]
        lora = None if lora is None else (lora[0], float(lora[1]))
        return cls(list(tokens), params, deadline, cancelled, on_text, Future(), stops, lora)

    @property
    def need(self) -> int:
        """KV cells this request may ever hold: the prompt and every token it may feed back."""
        return len(self.tokens) + self.params.max_tokens

    def interrupted(self, now: float) -> FinishReason | None:
        """Cancelled, or out of time at `now` (a time.monotonic() value)."""
        if self.cancelled is not None and self.cancelled.is_set():
            return FinishReason.CANCELLED
        if self.deadline is not None and now >= self.deadline:
            return FinishReason.TIME_LIMIT
        return None


@dataclass(eq=False)
class EmbedRequest:
    tokens: list[int]
    future: Future[tuple[float, ...]]

    @classmethod
    def new(cls, tokens: list[int], size: int, n_vocab: int) -> EmbedRequest:
        """Raises ValueError for an input empty or longer than `size`, or with a token outside the vocabulary."""
        if not tokens:
            raise ValueError("the input has no tokens")
        if len(tokens) > size:
            raise ValueError(f"{len(tokens)} input tokens exceed the embedding context of {size} tokens")
        for token in tokens:
            if not 0 <= token < n_vocab:  # llama.cpp would abort on it
                raise ValueError(f"token {token} is outside the vocabulary")
        return cls(list(tokens), Future())


class SequenceState(enum.Enum):
    PREFILL = "prefill"  # prompt tokens still to decode, in chunks
    DECODING = "decoding"  # a sampled token to feed back next step
    FINISHED = "finished"  # released: its slot is free


@dataclass(eq=False)
class Slot:
    id: int  # the llama.cpp seq_id
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds, by position
    seq: Sequence | None = None
    last_used: int = 0  # admission counter, for LRU eviction and slot choice
    lora: LoraSet = None  # the adapter its cached cells were computed under


@dataclass(eq=False)
class Sequence:
    request: Request
    slot: Slot
    chain: Any  # llama_sampler_p
    pending: list[int]  # prompt tokens still to decode (PREFILL)
    started: float
    output: SequenceOutput
    state: SequenceState = SequenceState.PREFILL
    next_token: int = -1  # sampled, to be fed back next step (DECODING)
    drafter: Drafter | None = None  # prompt-lookup drafts, when speculation is on
    last_token_at: float = 0.0  # time.perf_counter() of its latest token; 0: none yet
    # this step's share of the batch: its tokens, where the first sampled token's logits are, and the
    # drafts after it (each with its logits, at the indices that follow)
    batch_tokens: list[int] = field(default_factory=list)
    logits_index: int = -1
    drafts: list[int] = field(default_factory=list)

    def decoded(self) -> None:
        """This step's batch tokens are in its cells now."""
        self.slot.cached.extend(self.batch_tokens)
        if self.state is SequenceState.PREFILL:
            del self.pending[: len(self.batch_tokens)]
            if not self.pending and self.request.prompt_decoded is not None:
                self.request.prompt_decoded.set()

    def feed(self, token: int) -> None:
        """A sampled token that does not end the answer: decoded next step."""
        self.next_token = token
        self.state = SequenceState.DECODING
        if self.drafter is not None:
            self.drafter.append(token)


def next_lora_set(running: list[LoraSet], last: LoraSet) -> LoraSet:
    """The adapter set a step decodes, from the running sequences' sets in admission order: with one set
    (the usual case), that one; with several, in the order of their oldest sequences, the one after the
    set decoded last step, so that each gets every n-th step."""
    sets = list(dict.fromkeys(running))
    if len(sets) == 1 or last not in sets:
        return sets[0]
    return sets[(sets.index(last) + 1) % len(sets)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case for a repeated prompt: one C-level comparison
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SlotTable:
    """The slots and the KV pool's reservations; used on the scheduler thread only (`stats` reads it
    from others)."""

    def __init__(self, memory: KVMemory, n_slots: int, cache_prompt: bool) -> None:
        self._memory = memory
        self._cache_prompt = cache_prompt
        self.slots = [Slot(i) for i in range(n_slots)]
        self.reserved = 0  # cells the running sequences may still need, in all
        self._admissions = 0

    @property
    def pool(self) -> int:
        return self._memory.n_ctx

    @property
    def can_reuse(self) -> bool:
        """Partial seq_rm works (no recurrent state), and the cache is wanted."""
        return self._cache_prompt and not self._memory.stateful

    @property
    def can_copy(self) -> bool:
        # A cell shared by two sequences is never recycled by llama.cpp's SWA cache (only single-owner
        # masked cells are), so sharing could overfill a SWA cache smaller than the pool: copy only
        # where there is no SWA, or where the SWA cache is full-size (swa_full, this version's default).
        memory = self._memory
        return self.can_reuse and (memory.n_swa == 0 or memory.swa_full)

    def cached_cells(self) -> int:
        return sum(len(s.cached) for s in list(self.slots) if s.seq is None)

    def used_cells(self) -> int:
        return sum(len(s.cached) for s in list(self.slots))

    def free_slots_for(self, request: Request) -> list[Slot]:
        """The free slots, where the request's worst case fits next to the running ones'; else none."""
        free = [slot for slot in self.slots if slot.seq is None]
        if not free or self.reserved + request.need > self.pool:
            return []
        return free

    def usable_prefix(self, slot: Slot, tokens: list[int], lora: LoraSet) -> int:
        """How many of the prompt's first tokens this slot's cells can serve (at most all but the
        last, whose logits are needed): none of cells computed under another adapter."""
        if not self.can_reuse or not slot.cached or slot.lora != lora:
            return 0
        keep = min(_common_prefix(slot.cached, tokens), len(tokens) - 1)
        if keep <= 0:
            return 0
        n_swa = self._memory.n_swa
        if n_swa > 0:
            # A SWA cache recycles a sequence's cells once they fall out of its window; the next token
            # (at position `keep`) needs every position after keep - n_swa. As llama-server does, fall
            # back to decoding the whole prompt when they are gone.
            pos_min = self._memory.seq_pos_min(slot.id)
            if pos_min < 0 or pos_min > max(0, keep - n_swa):
                return 0
        return keep

    def place(self, request: Request, free: list[Slot]) -> tuple[Slot, int]:
        """Choose one of the free slots for the request, give it the longest cached prefix there is
        (its own, or shared from another slot), reserve the request's cells, and evict idle caches
        that no longer fit. Returns the slot and how many prompt tokens its cells hold."""
        memory = self._memory
        tokens = request.tokens
        usable = {s.id: self.usable_prefix(s, tokens, request.lora) for s in self.slots}
        # the free slot whose cache serves most of the prompt; else an empty one, else the least recently used
        slot = max(free, key=lambda s: (usable[s.id], not s.cached, -s.last_used))
        keep = usable[slot.id]
        source: Slot | None = None
        if self.can_copy:
            best = max(self.slots, key=lambda s: usable[s.id])
            if usable[best.id] > keep or (best is slot and keep < len(slot.cached)):
                # Share the prefix instead of cutting a cache: into an empty slot, or the least recently used
                # one, so that the cache that served it stays whole for the next request like it.
                slot = max(free, key=lambda s: (s is not best, not s.cached, -s.last_used))
                if slot is not best:
                    source, keep = best, usable[best.id]
        if source is not None:
            # a prefix another sequence holds (a shared system prompt): share its cells
            memory.seq_rm(slot.id, -1, -1)
            memory.seq_cp(source.id, slot.id, 0, keep)
            slot.cached = source.cached[:keep]
        elif keep < len(slot.cached):
            if not memory.seq_rm(slot.id, keep, -1):
                memory.seq_rm(slot.id, -1, -1)  # cannot cut: start afresh
                keep = 0
            slot.cached = slot.cached[:keep]
        slot.lora = request.lora  # what its cells will be computed under from here on
        self.reserved += request.need
        # idle caches give way to the reservation, least recently used first
        idle = sorted(
            (s for s in self.slots if s.seq is None and s is not slot and s.cached), key=lambda s: s.last_used
        )
        cached = sum(len(s.cached) for s in idle)
        while idle and self.reserved + cached > self.pool:
            victim = idle.pop(0)
            cached -= len(victim.cached)
            memory.seq_rm(victim.id, -1, -1)
            victim.cached = []
        self._admissions += 1
        slot.last_used = self._admissions
        return slot, keep

    def truncate(self, seq: Sequence, length: int) -> None:
        """Drop the sequence's cells from position `length` on: drafts that were not accepted."""
        slot = seq.slot
        if length < len(slot.cached):
            if not self._memory.seq_rm(slot.id, length, -1):  # never drafted where cells cannot be cut
                raise RuntimeError(f"llama.cpp could not drop cells {length}.. of sequence {slot.id}")
            del slot.cached[length:]

    def release(self, seq: Sequence, keep_cache: bool) -> None:
        """The sequence's reservation and slot; its cells stay as a prompt cache if `keep_cache`."""
        seq.state = SequenceState.FINISHED
        self.reserved -= seq.request.need
        slot = seq.slot
        slot.seq = None
        if not (keep_cache and self.can_reuse):
            self._memory.seq_rm(slot.id, -1, -1)
            slot.cached = []
