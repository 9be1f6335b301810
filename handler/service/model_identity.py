"""The identity of the model at the source, for cache keys, from the event loop."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from handler.engine.model import ModelHolder


async def current_identity(model: ModelHolder) -> str:
    """A stat when nothing changed; otherwise read off the event loop (a digest, a sidecar, a HEAD)."""
    known = model.known_identity()
    return known if known is not None else await run_in_threadpool(model.current_identity)
