"""uvicorn's HTTP protocol (httptools) with the limits a server facing clients directly needs.

Behind API Gateway or a function URL the platform caps headers and slow requests; a plain container
(Cloud Run, a VM, a laptop) has uvicorn alone in front, which caps neither: a request head is
refused past `max_header_bytes` (431) and a connection that has not finished its head within
`header_timeout_seconds` of its first byte, or of opening, is closed. Slow bodies are bounded in
the app (`handler.middleware.body_limit`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 32 * 1024
    header_timeout_seconds = 10.0

    @classmethod
    def configured(cls, max_header_bytes: int, header_timeout_seconds: float) -> type[LimitedHttpToolsProtocol]:
        return type(
            cls.__name__,
            (cls,),
            {"max_header_bytes": max_header_bytes, "header_timeout_seconds": header_timeout_seconds},
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True  # until the head of the current request is complete
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes = True, 0
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        # The bytes of a kept-alive connection's next head may arrive before on_message_begin: count them here too.
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > 2 * self.max_header_bytes:
            self._refuse_head()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.logger.warning(
                "Request head not complete within %s s; connection closed.", self.header_timeout_seconds
            )
            self.transport.close()

    def _refuse_head(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        self.logger.warning("Request head over %s bytes; refused.", self.max_header_bytes)
        message = b"Request headers are too large.\n"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
        )
        self.transport.close()
