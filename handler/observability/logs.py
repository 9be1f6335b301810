"""Structured logs: one JSON object per line, which CloudWatch and `jq` both read."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# The request being answered, set by the request-context middleware; worker threads inherit it where
# their work is submitted with the caller's context (contextvars.copy_context).
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every line logged while answering it, not only the access line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Route the service's loggers to stdout as JSON; idempotent, so warm invocations add nothing."""
    logger = logging.getLogger("handler")
    logger.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(JsonFormatter())
        stream.addFilter(RequestIdFilter())
        logger.addHandler(stream)
        logger.propagate = False
