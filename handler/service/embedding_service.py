"""Answering an embeddings request: each input's vector from the cache, the rest from the model.

Every input has a cache key of its own, so a list shares its vectors with any other request that
embeds the same text. The inputs the cache does not hold are computed together, once: an identical
request in flight is joined, and the vectors are stored by the worker that made them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from handler.cache.keys import embedding_key
from handler.cache.policy import CachePolicy
from handler.cache.response_cache import ResponseCache
from handler.core.errors import BadRequest
from handler.core.settings import Settings
from handler.core.types import CacheSource, Embedding, EmbeddingInput
from handler.service.served_models import ServedModels
from handler.service.single_flight import SingleFlight

# Slowest first: a list's X-Cache names the slowest tier any of its vectors came from.
HIT_ORDER = (CacheSource.HIT_SHARED, CacheSource.HIT_DISK, CacheSource.HIT_MEMORY)


@dataclass(frozen=True)
class Embedded:
    embeddings: list[Embedding]  # one per input, in order
    source: CacheSource  # MISS when any input was computed, else the slowest tier a vector came from

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.embeddings)


class EmbeddingService:
    def __init__(self, settings: Settings, served: ServedModels, cache: ResponseCache) -> None:
        self.settings = settings
        self.served = served
        self.model = served.model
        self.cache = cache
        self.flights: SingleFlight[list[Embedding]] = SingleFlight(workers=2)

    def check_inputs(self, inputs: list[EmbeddingInput]) -> None:
        """The request's limits: how many inputs, none empty, texts within `max_prompt_chars` (token ids are
        checked against the vocabulary and the embedding context once the model is loaded)."""
        if not inputs:
            raise BadRequest("input must hold at least one string or list of token ids.", param="input")
        limit = self.settings.embedding_max_inputs
        if len(inputs) > limit:
            raise BadRequest(
                f"input holds {len(inputs)} inputs, above this service's limit of {limit} per request.",
                param="input",
            )
        for index, given in enumerate(inputs):
            if not given:
                raise BadRequest(f"Input {index} is empty; each input must hold some text or tokens.", param="input")
            if isinstance(given, str) and len(given) > self.settings.max_prompt_chars:
                raise BadRequest(
                    f"Input {index} is {len(given)} characters, above this service's limit of "
                    f"{self.settings.max_prompt_chars}. Shorten it.",
                    param="input",
                )

    def _key(self, identity: str, given: EmbeddingInput) -> str:
        return embedding_key(identity, given, self.settings.embedding_pooling, self.settings.embedding_normalize)

    async def embed(self, inputs: list[EmbeddingInput], policy: CachePolicy) -> Embedded:
        identity = await self.served.identity()
        keys = [self._key(identity, given) for given in inputs]
        found: dict[str, tuple[Embedding, CacheSource]] = {}
        if policy.read:
            for key in keys:
                hit = self.cache.get_embedding_fast(key)
                if hit is not None:
                    found[key] = hit
            slow = [key for key in dict.fromkeys(keys) if key not in found]
            if slow:
                found.update(await run_in_threadpool(self._get_slow, slow))
        missing = {key: given for key, given in zip(keys, inputs, strict=True) if key not in found}
        if missing:
            self.cache.count_miss(len(missing))
            todo = list(missing.values())

            def compute() -> list[Embedding]:
                embeddings = self.model.embed(todo)
                if policy.store:
                    for given, embedding in zip(todo, embeddings, strict=True):
                        # under the model that computed it, should the model file have been replaced meanwhile
                        self.cache.put_embedding(self._key(embedding.model_identity or identity, given), embedding)
                return embeddings

            flight = hashlib.sha256("\n".join(missing).encode("ascii")).hexdigest()
            computed, _ = await self.flights.run(flight, compute, self.settings.max_pending_generations)
            for key, embedding in zip(missing, computed, strict=True):
                found[key] = (embedding, CacheSource.MISS)
        sources = {found[key][1] for key in keys}
        source = next((s for s in (CacheSource.MISS, *HIT_ORDER) if s in sources), CacheSource.MISS)
        return Embedded([found[key][0] for key in keys], source)

    def _get_slow(self, keys: list[str]) -> dict[str, tuple[Embedding, CacheSource]]:
        out = {}
        for key in keys:
            hit = self.cache.get_embedding_slow(key)
            if hit is not None:
                out[key] = hit
        return out

    def close(self) -> None:
        self.flights.close()
