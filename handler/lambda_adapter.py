"""Mangum, made safe for any event: one it cannot read gets a 400, never an exception out of the function.

Mangum raises on an event it does not know (`{}`, a direct invocation's own payload) and on a known
kind with a broken part (a body marked base64 that is not, `headers: null`, a null cookie, a REST API
or ALB event without `path`). Such an event is answered here, in the service's error shape with the
invocation's request id, and logged as one warning that carries none of the event's content.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from mangum import Mangum
from mangum.types import LambdaContext, LambdaEvent, LambdaHandler, Scope

from handler.middleware.error_responses import error_json

log = logging.getLogger("handler.lambda")

MESSAGE = (
    "The Lambda event could not be read as an HTTP request (API Gateway HTTP or REST API, function URL or "
    "ALB): a part of it is missing or malformed."
)


class UnreadableEvent(Exception):
    """The event is not one Mangum can turn into a request; its message names only the cause's type."""


class LambdaAdapter(Mangum):
    """Mangum whose events are checked whole before the app sees them: an unreadable one is a 400."""

    def infer(self, event: LambdaEvent, context: LambdaContext) -> LambdaHandler:
        try:
            handler = super().infer(event, context)
            _check(handler.scope, handler.body)
        except Exception as exc:
            raise UnreadableEvent(type(exc).__name__) from exc
        return handler

    def __call__(self, event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
        try:
            return super().__call__(event, context)
        except UnreadableEvent as exc:
            return bad_event_response(context, str(exc))


def _check(scope: Scope, body: bytes) -> None:
    """What Mangum leaves unchecked and the app needs: a method and a path that are text."""
    if not isinstance(scope["method"], str) or not scope["method"]:
        raise TypeError("method")
    if not isinstance(scope["path"], str):
        raise TypeError("path")
    if not isinstance(body, bytes):
        raise TypeError("body")


def bad_event_response(context: LambdaContext | None, cause: str) -> dict[str, Any]:
    """The 400 for an unreadable event, as a proxy integration response; logged once, without the event."""
    request_id = getattr(context, "aws_request_id", None)
    if not isinstance(request_id, str) or not request_id:
        request_id = uuid.uuid4().hex
    log.warning("unreadable Lambda event (%s): answered 400", cause, extra={"request_id": request_id})
    return {
        "statusCode": 400,
        "headers": {"content-type": "application/json", "x-request-id": request_id},
        "body": json.dumps(error_json("bad_request", MESSAGE, request_id)),
    }
