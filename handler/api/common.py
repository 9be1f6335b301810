"""What every answering route does alike: read a function's remaining time, describe the answer in the log."""

from __future__ import annotations

import time

from fastapi import Request

from handler.core.types import CacheSource, Completion


def remaining_ms(request: Request) -> int | None:
    """The Lambda invocation's remaining time: from its context under Mangum, from the deadline the
    Web Adapter forwards behind it; None elsewhere."""
    context = request.scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        return int(remaining())
    deadline = getattr(request.state, "invocation_deadline_ms", None)
    return None if deadline is None else max(0, int(deadline - time.time() * 1000))


def log_answer(
    request: Request,
    source: CacheSource,
    completion: Completion,
    prompt: str,
    *,
    shared: bool = False,
    stream: bool = False,
) -> None:
    """Fields for the request's one log line (request_context writes it); text only if log_prompts is set."""
    fields = {
        "cache": source,
        "shared_generation": shared,
        "stream": stream,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
    }
    if completion.generation_seconds:
        fields["generation_s"] = round(completion.generation_seconds, 6)
        fields["tokens_per_second"] = round(completion.tokens_per_second or 0.0, 2)
    if completion.load_seconds is not None:
        fields["model_load_s"] = round(completion.load_seconds, 4)
    if request.app.state.settings.log_prompts:
        fields.update(prompt=prompt, answer=completion.text)
    request.state.log_fields = fields
