"""FastAPI, imported with its OpenAPI models left unbuilt until something uses them.

`import fastapi` builds about a hundred pydantic models of the OpenAPI schema
(fastapi.openapi.models) that only /openapi.json and /docs use; deferring them takes them off every
cold start (the README has the figures). Models created while pydantic's `defer_build` is set are
built on their first validation instead. The setting is restored at once, so this service's own models, and any
created later, are built as usual.
"""

from __future__ import annotations

import sys


def import_fastapi() -> None:
    """Call before anything imports fastapi; once it has been imported, this does nothing."""
    if "fastapi" in sys.modules:
        return
    from pydantic import BaseModel

    BaseModel.model_config["defer_build"] = True
    try:
        import fastapi  # noqa: F401
    finally:
        BaseModel.model_config.pop("defer_build", None)
