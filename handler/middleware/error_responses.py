"""The one place that turns errors into responses.

A body carries what the caller can act on and the request id; the cause of a fault inside
(paths, exception text, stack) goes only to the log, under the same request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from handler.core.errors import ServiceError

log = logging.getLogger("handler.errors")


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_json(error_type: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The error body every error answer has, `{"error": {"type", "message", "request_id", ...}}`, ready
    to encode: whatever it quotes of the request (a model name, a field name, a schema's text) may hold a
    lone surrogate, which JSON can escape but no UTF-8 body can carry, so each becomes its `\\udXXXX` text."""
    body: dict[str, Any] = encodable(
        {"error": {"type": error_type, "message": message, "request_id": request_id, **extra}}
    )
    return body


def error_body(request: Request, error_type: str, message: str, **extra: Any) -> dict[str, Any]:
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


async def service_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    level = logging.WARNING if exc.status_code < 500 else logging.ERROR
    log.log(level, "%s: %s", exc.error_type, exc.cause, extra={"request_id": request_id_of(request)})
    extra = {"param": exc.param} if exc.param else {}
    return JSONResponse(
        error_body(request, exc.error_type, exc.public_message, **extra),
        status_code=exc.status_code,
        headers=exc.headers,
    )


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
    openai_route = request.url.path.startswith("/v1/")
    return JSONResponse(
        error_body(
            request,
            "invalid_request",
            f"Invalid request: {summary}",
            fields=fields,
            **({"param": fields[0]["field"]} if openai_route and fields else {}),
        ),
        status_code=400 if openai_route else 422,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body(request, "http_error", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"request_id": request_id_of(request)})
    return JSONResponse(error_body(request, "internal_error", ServiceError.public_message), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
