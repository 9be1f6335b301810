"""Every route takes JSON: a body sent under another Content-Type is read as JSON when it is JSON.

`curl -d '{...}'` sends `application/x-www-form-urlencoded`, and FastAPI would then see bytes, not an
object, and answer a 422 that says nothing of the header. As llama-server does, a body that parses as
JSON is read as JSON whatever its Content-Type says; one that does not parse gets a 415 that says
what to send. A request with no Content-Type at all is FastAPI's to read as JSON already.

It runs inside the body limit, so the body it reads is whole and bounded, and only for a path and method
a route serves: anything else is routing's to answer (404, 405).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.core.errors import ServiceError
from handler.middleware.error_responses import service_error_response

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"

    def __init__(self, content_type: str) -> None:
        super().__init__(f"body under content-type {content_type!r} is not JSON")
        self.public_message = (
            f"The request body is sent as `{content_type}` and is not JSON. Send a JSON body with "
            "`Content-Type: application/json` (curl: -H 'Content-Type: application/json')."
        )


def is_json_type(content_type: bytes) -> bool:
    """`application/json`, or any `application/*+json`, whatever its parameters."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", ()) if scope["type"] == "http" else ()
        content_type = next((value for name, value in headers if name == b"content-type"), None)
        if content_type is None or is_json_type(content_type) or not self._served(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if body:
            try:
                json.loads(body)
            except ValueError:  # not JSON, nor UTF-8 text
                response = await service_error_response(
                    Request(scope), UnsupportedMediaType(content_type.decode("latin-1"))
                )
                await response(scope, receive, send)
                return
            kept = [(name, value) for name, value in headers if name != b"content-type"]
            scope = {**scope, "headers": [*kept, JSON_CONTENT_TYPE]}
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    def _served(scope: Scope) -> bool:
        """Whether a route serves this path and method (Starlette puts the app in the scope)."""
        app = scope.get("app")
        return app is not None and any(route.matches(scope)[0] is Match.FULL for route in app.routes)
