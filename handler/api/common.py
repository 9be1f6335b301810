"""What every answering route does alike: read a function's remaining time, describe the answer in the log."""

from __future__ import annotations

import time

from fastapi import Request

from handler.core.types import CacheSource, Completion

# API Gateway (HTTP API and REST API) ends an integration at 30 s whatever the function's Timeout, and
# answers 503/504 itself: an answer it cuts off is lost. The request's time behind it ends a second
# earlier, so that the deadline's margin to answer (2 s) leaves the generation's end before 28 s.
GATEWAY_INTEGRATION_MS = 29_000


def remaining_ms(request: Request) -> int | None:
    """The Lambda invocation's remaining time: from its context under Mangum, from the deadline the
    Web Adapter forwards behind it; None elsewhere. Behind API Gateway, at most what the gateway's
    integration timeout leaves."""
    context = request.scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        left = int(remaining())
        gateway = gateway_remaining_ms(request.scope.get("aws.event"))
        return left if gateway is None else min(left, gateway)
    deadline = getattr(request.state, "invocation_deadline_ms", None)
    return None if deadline is None else max(0, int(deadline - time.time() * 1000))


def gateway_remaining_ms(event: object, now_ms: float | None = None) -> int | None:
    """What API Gateway's integration timeout leaves of a request that came through it (an HTTP API v2
    or REST API v1 event), counted from when the gateway received it; None for any other event: a
    function URL's (which has an apiId too, but a *.lambda-url.* domain), an ALB's, or none.

    A receipt time in the future or more than the timeout ago is not believed (another clock, or an
    event replayed, as `sam local invoke -e` does): the time is then counted from now."""
    if not isinstance(event, dict):
        return None
    context = event.get("requestContext")
    if not isinstance(context, dict) or "elb" in context or not context.get("apiId"):
        return None
    if ".lambda-url." in str(context.get("domainName", "")):
        return None
    received = context.get("timeEpoch", context.get("requestTimeEpoch"))  # ms: v2, then v1
    now = time.time() * 1000 if now_ms is None else now_ms
    spent = now - received if isinstance(received, int | float) and not isinstance(received, bool) else 0.0
    if not 0 <= spent <= GATEWAY_INTEGRATION_MS:
        spent = 0.0
    return int(GATEWAY_INTEGRATION_MS - spent)


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
