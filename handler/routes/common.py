"""What every answering route does alike: read a function's remaining time, describe the answer in the log."""

from __future__ import annotations

from fastapi import Request

from handler.model import Completion


def remaining_ms(request: Request) -> int | None:
    """The Lambda invocation's remaining time, under Mangum; None under uvicorn."""
    context = request.scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return int(remaining()) if callable(remaining) else None


def log_answer(request: Request, source: str, completion: Completion, prompt: str, *, shared: bool = False,
               stream: bool = False) -> None:
    """Fields for the request's one log line (request_context writes it); text only if log_prompts is set."""
    fields = {
        "cache": source,
        "shared_generation": shared,
        "stream": stream,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
    }
    if request.app.state.settings.log_prompts:
        fields.update(prompt=prompt, answer=completion.text)
    request.state.log_fields = fields
