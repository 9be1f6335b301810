"""ASGI middleware: request id and log line, API keys, body size limit."""
