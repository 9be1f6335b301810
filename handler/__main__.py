"""Local server: `python -m handler` runs the same app under uvicorn (HOST and PORT from the environment)."""

from __future__ import annotations

import os
import sys

from handler.deferred_openapi import import_fastapi

import_fastapi()  # first: a container platform's cold start pays for the server's import too

import uvicorn  # noqa: E402

from handler.app import create_app  # noqa: E402
from handler.core.config import ConfigError  # noqa: E402
from handler.http_limits import LimitedHttpToolsProtocol  # noqa: E402


def main() -> int:
    try:
        app = create_app()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # The app logs one JSON line per request itself; uvicorn's access log would repeat it.
    settings = app.state.settings
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        access_log=False,
        http=LimitedHttpToolsProtocol.configured(settings.max_header_bytes, settings.header_timeout_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
