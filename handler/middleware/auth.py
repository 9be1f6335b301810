"""Optional API-key access: off unless keys are configured; `/health` and the docs stay open.

Each request's scope state says whether it is `authenticated`: keys are off, or it carries a valid
one. An open route reads it to decide how much to tell (`/health` tells a caller without a key only
its status).

Keys come from config (`api_keys`, or `CHAT_API_KEYS='["..."]'`) and from an AWS Secrets Manager
secret (`api_keys_secret_id`), fetched once per container with boto3, imported only then. Keys
are compared as sha256 digests with `hmac.compare_digest`, against every key, so neither the
length nor the position of a match shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Mapping
from typing import ClassVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from handler.core.errors import ServiceError, ServiceUnavailable
from handler.core.settings import Settings
from handler.middleware.error_responses import service_error_response

# The key in the scope's state (`request.state.authenticated`) that says whether the request may see
# everything: API keys are off, or it carries a valid one. Absent means no.
AUTHENTICATED = "authenticated"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"
    public_message = "A valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    headers: ClassVar[Mapping[str, str] | None] = {"WWW-Authenticate": "Bearer"}
    code = "invalid_api_key"  # OpenAI's


class ApiKeys:
    def __init__(self, settings: Settings) -> None:
        self._secret_id = settings.api_keys_secret_id
        self._digests = [_digest(key) for key in settings.api_keys]
        self._secret_loaded = self._secret_id is None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._digests) or self._secret_id is not None

    def _load_secret(self) -> None:
        """Blocking; once per container. A failure is a 503 and is retried by the next request."""
        with self._lock:
            if self._secret_loaded:
                return
            try:
                import boto3

                value = boto3.client("secretsmanager").get_secret_value(SecretId=self._secret_id)["SecretString"]
            except Exception as exc:
                raise ServiceUnavailable(f"cannot read API keys secret {self._secret_id}: {exc!r}") from exc
            keys = _parse_secret(value)
            self._digests = [*self._digests, *(_digest(key) for key in keys)]
            self._secret_loaded = True

    async def check(self, request: Request) -> None:
        if not self.enabled:
            return
        if not self._secret_loaded:
            await run_in_threadpool(self._load_secret)
        offered = _offered_key(request)
        if offered is None:
            raise Unauthorized("no API key")
        digest = _digest(offered)
        matched = False
        for known in self._digests:  # no early exit: every key is compared
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise Unauthorized("wrong API key")

    async def accepts(self, request: Request) -> bool:
        """Whether `request` may see everything; never raises. Without a key it is not, and the secret
        is not read for it (a platform's health probe sends none); with one that cannot be checked now
        (the secret unreadable), it is not either."""
        if not self.enabled:
            return True
        if _offered_key(request) is None:
            return False
        try:
            await self.check(request)
        except ServiceError:
            return False
        return True


class ApiKeyMiddleware:
    """Guards every route but the open ones, before routing: an unauthenticated caller learns nothing,
    not even whether its body would have parsed, and a route added later is guarded by default."""

    OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authenticated = True
            if self.keys.enabled:
                request = Request(scope)
                if scope["path"] in self.OPEN_PATHS:
                    authenticated = await self.keys.accepts(request)
                else:
                    try:
                        await self.keys.check(request)
                    except ServiceError as exc:
                        response = await service_error_response(request, exc)
                        await response(scope, receive, send)
                        return
            scope.setdefault("state", {})[AUTHENTICATED] = authenticated
        await self.app(scope, receive, send)


def _offered_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _parse_secret(value: str) -> list[str]:
    try:
        data = json.loads(value)
    except ValueError:
        data = value.splitlines()
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list):
        raise ServiceUnavailable("the API keys secret must be a JSON list of keys or one key per line")
    return [str(key).strip() for key in data if str(key).strip()]
