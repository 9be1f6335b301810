"""Which callers hold each loaded engine, so that a model replaced under them is freed only after the last."""

from __future__ import annotations

import threading

from handler.engine.contract import Engine
from handler.engine.model_files.source import OpenedModel


class Leases:
    """How many callers hold each engine. A replaced engine is closed, and its file released, on a thread
    of its own once the last caller has its answer (its generations, streams and embeddings included)."""

    def __init__(self) -> None:
        self._held: dict[int, int] = {}  # by id() of the engine
        self._changed = threading.Condition()

    def take(self, engine: Engine) -> None:
        with self._changed:
            self._held[id(engine)] = self._held.get(id(engine), 0) + 1

    def release(self, engine: Engine) -> None:
        with self._changed:
            self._held[id(engine)] -= 1
            if not self._held[id(engine)]:
                del self._held[id(engine)]
                self._changed.notify_all()

    def retire(self, engine: Engine, opened: OpenedModel | None) -> None:
        def wait_then_close() -> None:
            with self._changed:
                self._changed.wait_for(lambda: id(engine) not in self._held)
            engine.close()
            if opened is not None:
                opened.release()

        threading.Thread(target=wait_then_close, name="retire-model", daemon=True).start()
