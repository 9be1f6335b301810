"""Request bodies larger than `max_body_bytes` get a 413 that names the limit, before they reach a route;
bodies still arriving after `timeout` seconds get a 408, so a client that sends half a body cannot
hold a connection and its memory forever.

A declared Content-Length over the limit is refused before anything is read; a body without one
(chunked, or as Mangum hands it over) is counted as it arrives and refused once over. The 413
leaves in the same JSON shape as every other error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import ClassVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.core.errors import ServiceError
from handler.middleware.error_responses import service_error_response


class BodyTooLarge(ServiceError):
    status_code = 413
    error_type = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"body over {limit} bytes")
        self.public_message = f"The request body is larger than this service's limit of {limit} bytes."


class BodyTooSlow(ServiceError):
    status_code = 408
    error_type = "request_timeout"
    headers: ClassVar[Mapping[str, str] | None] = {"Connection": "close"}

    def __init__(self, seconds: float) -> None:
        super().__init__(f"body not complete after {seconds} s")
        self.public_message = f"The request body did not arrive whole within {seconds:g} seconds."


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, BodyTooLarge(self.max_bytes))
            return
        # Read the body here (it is small by definition) rather than count it inside the app:
        # FastAPI turns any error while it reads a body into a generic 400.
        chunks: list[bytes] = []
        received = 0
        deadline = None if self.timeout is None else asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                assert self.timeout is not None
                await self._refuse(scope, receive, send, BodyTooSlow(self.timeout))
                return
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await self._refuse(scope, receive, send, BodyTooLarge(self.max_bytes))
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
        response = await service_error_response(Request(scope), error)
        await response(scope, receive, send)
