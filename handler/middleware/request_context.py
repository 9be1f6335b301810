"""Request id and the one access-log line per request, as a pure ASGI middleware.

The id is the Lambda invocation's own request id (so logs and the platform agree): under
Mangum from the invocation's context, behind the Lambda Web Adapter from the context it forwards
in the `x-amzn-lambda-context` header (read only inside Lambda, where nothing else reaches the
server), along with the invocation's deadline; else the caller's `X-Request-Id` when it is a sane
token, or a fresh one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.observability.logs import request_id_var

log = logging.getLogger("handler.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def adapter_context(scope: Scope) -> dict[str, Any]:
    """The invocation context the Lambda Web Adapter forwards; empty outside Lambda or without it."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return {}
    for name, value in scope.get("headers", ()):
        if name == b"x-amzn-lambda-context":
            try:
                context = json.loads(value)
            except ValueError:
                return {}
            return context if isinstance(context, dict) else {}
    return {}


def _request_id(scope: Scope, forwarded: dict[str, Any]) -> str:
    context = scope.get("aws.context")
    aws_id = getattr(context, "aws_request_id", None) or forwarded.get("request_id")
    if isinstance(aws_id, str) and _SAFE_ID.match(aws_id):
        return aws_id
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, record: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """`record` sees each request's log fields (metrics) and may add some of its own to the line."""
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        forwarded = adapter_context(scope)
        request_id = _request_id(scope, forwarded)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        deadline = forwarded.get("deadline")
        if isinstance(deadline, int | float) and not isinstance(deadline, bool):
            state["invocation_deadline_ms"] = float(deadline)  # epoch milliseconds
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = {
                "request_id": request_id,
                "method": scope.get("method"),
                "route": scope.get("path"),
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            fields.update(state.get("log_fields", {}))
            if self.record is not None:
                fields.update(self.record(fields))
            log.info("request", extra=fields)
            request_id_var.reset(token)
