"""Request bodies larger than `max_body_bytes` get a 413 that names the limit, before they reach a route.

A declared Content-Length over the limit is refused before anything is read; a body without one
(chunked, or as Mangum hands it over) is counted as it arrives and refused once over. The 413
leaves in the same JSON shape as every other error.
"""

from __future__ import annotations

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


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body here (it is small by definition) rather than count it inside the app:
        # FastAPI turns any error while it reads a body into a generic 400.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
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

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await service_error_response(Request(scope), BodyTooLarge(self.max_bytes))
        await response(scope, receive, send)
