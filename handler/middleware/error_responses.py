"""The one place that turns errors into responses.

A body carries what the caller can act on and the request id; the cause of a fault inside
(paths, exception text, stack) goes only to the log, under the same request id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from handler.core.errors import ServiceError

log = logging.getLogger("handler.errors")


# The field that holds the prompt on each OpenAI-compatible route that generates: what a context overflow
# or a prompt over `max_prompt_chars` names as its `param`.
PROMPT_PARAMS = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/responses": "input",
    "/v1/messages": "messages",
}
# Anthropic's Messages API (/v1/messages) answers errors in its own shape, `error.type` by status.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def is_openai_path(path: str) -> bool:
    """Whether `path` belongs to the OpenAI-compatible API, whose errors are in OpenAI's shape: `message`,
    `type`, `param` and `code` always there (null where none), as its clients read them."""
    return path == "/v1" or path.startswith("/v1/")


def error_json(error_type: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The error body every error answer has, `{"error": {"type", "message", "request_id", ...}}`, ready
    to encode: whatever it quotes of the request (a model name, a field name, a schema's text) may hold a
    lone surrogate, which JSON can escape but no UTF-8 body can carry, so each becomes its `\\udXXXX` text."""
    body: dict[str, Any] = encodable(
        {"error": {"type": error_type, "message": message, "request_id": request_id, **extra}}
    )
    return body


def error_body(
    request: Request, error_type: str, message: str, param: str | None = None, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The error body in the shape of the API `request` belongs to: on /v1, OpenAI's (`param` and `code`
    always there); elsewhere the service's own, `param` only where one is named and no `code`."""
    if is_openai_path(request.url.path):
        extra = {"param": param, "code": code, **extra}
    elif param is not None:
        extra = {"param": param, **extra}
    return error_json(error_type, message, request_id_of(request), **extra)


def encodable(value: Any) -> Any:
    """`value` with every string in it (keys too) encodable as UTF-8: lone surrogates as escape text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(item) for item in value]
    return value


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_response(
    request: Request, body: dict[str, Any], status_code: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`body` (`error_body`'s) as the response; on Anthropic's routes in Anthropic's shape,
    `{"type": "error", "error": {"type", "message"}, "request_id"}`, which its clients read."""
    if is_anthropic_path(request.url.path):
        error = body["error"]
        kind = ANTHROPIC_ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
        body = {
            "type": "error",
            "error": {"type": kind, "message": error["message"]},
            "request_id": error["request_id"],
        }
    return JSONResponse(body, status_code=status_code, headers=headers)


async def service_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    level = logging.WARNING if exc.status_code < 500 else logging.ERROR
    log.log(level, "%s: %s", exc.error_type, exc.cause, extra={"request_id": request_id_of(request)})
    path = request.url.path
    if is_openai_path(path):
        param = exc.param or (PROMPT_PARAMS.get(path) if exc.about_prompt else None)
        body = error_body(request, exc.error_type, exc.openai_message(param), param=param, code=exc.code)
    else:
        body = error_body(request, exc.error_type, exc.public_message, param=exc.param)
    return error_response(request, body, exc.status_code, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Field-level messages, without echoing the input (which may be a long or private prompt).

    422 as FastAPI has it, but 400 on the OpenAI-compatible routes, as OpenAI answers (its clients
    raise BadRequestError for it)."""
    assert isinstance(exc, RequestValidationError)
    fields = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        fields.append({"field": ".".join(loc) or "body", "message": error.get("msg", "invalid")})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    openai_route = is_openai_path(request.url.path)
    return error_response(
        request,
        error_body(
            request,
            "invalid_request",
            f"Invalid request: {summary}",
            param=fields[0]["field"] if openai_route and fields else None,
            fields=fields,
        ),
        400 if openai_route else 422,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Routing's own errors: a path not served (404, naming what is), a method the path does not take (405)."""
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":  # the router's: no route has this path
        routes = ", ".join(served_routes(request.app))
        message = f"{request.method} {request.url.path} is not served here; routes: {routes}."
    return error_response(request, error_body(request, "http_error", message), exc.status_code, exc.headers)


def served_routes(app: Any) -> list[str]:
    """`METHOD /path` for each route the app serves: the API's, then the others (docs, metrics), each in the
    order they were added; HEAD left out."""
    routes = [route for route in flat_routes(app) if getattr(route, "methods", None) and route.path_format]
    routes.sort(key=lambda route: not getattr(route, "include_in_schema", True))
    return [
        f"{method} {route.path_format}"
        for route in routes
        if route.path_format != "/docs/oauth2-redirect"
        for method in sorted(route.methods - {"HEAD"})
    ]


def flat_routes(app: Any) -> Iterable[Any]:
    """The app's routes, those of its included routers among them (newer FastAPIs resolve these lazily)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # an older FastAPI: included routes are in app.routes as they are
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"request_id": request_id_of(request)})
    return error_response(request, error_body(request, "internal_error", ServiceError.public_message), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
