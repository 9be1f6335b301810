"""The models this service answers to, by the ids clients send as `model`: the model, then one id per
LoRA adapter; and the identities of their files, for cache keys, from the event loop."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from handler.core.errors import BadRequest, NotFound
from handler.core.settings import Settings
from handler.core.types import Lora
from handler.engine.model import ModelHolder


class ServedModels:
    def __init__(self, settings: Settings, model: ModelHolder) -> None:
        self.settings = settings
        self.model = model

    def ids(self) -> list[str]:
        """The model ids this service answers to: the model, then one per LoRA adapter (/v1/models)."""
        return [self.settings.served_model, *(self.settings.adapter_id(name) for name in self.settings.lora_adapters)]

    def lora_for(self, model_id: str | None, scale: float | None = None) -> Lora | None:
        """The adapter a model id names (None: the model alone). Raises NotFound for an id not served,
        BadRequest for a `lora_scale` sent with the model alone."""
        if model_id is None or model_id == self.settings.served_model:
            if scale is not None:
                raise BadRequest(
                    f"lora_scale applies to a LoRA adapter; `{self.settings.served_model}` is the model alone.",
                    param="lora_scale",
                )
            return None
        for name in self.settings.lora_adapters:
            if model_id == self.settings.adapter_id(name):
                return Lora(name, 1.0 if scale is None else scale)
        raise NotFound(
            f"The model `{model_id}` is not served here; this service serves "
            + ", ".join(f"`{m}`" for m in self.ids())
            + " (GET /v1/models).",
            param="model",
            code="model_not_found",
        )

    async def identity(self) -> str:
        """The identity of the model at the source: a stat when nothing changed; otherwise read off the
        event loop (a digest, a sidecar, a HEAD)."""
        known = self.model.known_identity()
        return known if known is not None else await run_in_threadpool(self.model.current_identity)

    async def adapter_identity(self, lora: Lora) -> str:
        known = self.model.known_adapter_identity(lora.name)
        return known if known is not None else await run_in_threadpool(self.model.adapter_identity, lora.name)
