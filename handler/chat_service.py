"""Answering a chat request: compose the prompt, then run the model off the event loop."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from handler.config import Settings
from handler.errors import BadRequest
from handler.model import Completion, ModelHolder, SamplingParams
from handler.prompt import compose


class ChatService:
    def __init__(self, settings: Settings, model: ModelHolder) -> None:
        self.settings = settings
        self.model = model

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        max_tokens = self.settings.max_tokens_default if max_tokens is None else max_tokens
        if max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(
                f"max_tokens is {max_tokens}, above this service's limit of {self.settings.max_tokens_limit}."
            )
        return SamplingParams.from_settings(self.settings, max_tokens)

    async def answer(self, prompt: str, max_tokens: int | None) -> Completion:
        params = self.sampling(max_tokens)
        return await run_in_threadpool(self.model.complete, compose(self.settings, prompt), params)
