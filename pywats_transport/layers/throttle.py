"""The throttle layer (placeholder: forwards requests unchanged)."""

from __future__ import annotations

from ..config import ThrottleSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncPassThroughLayer, PassThroughLayer


class ThrottleLayer(PassThroughLayer):
    name = "throttle"


class AsyncThrottleLayer(AsyncPassThroughLayer):
    name = "throttle"


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="throttle",
            position=400,
            config_model=ThrottleSettings,
            sync_factory=lambda inner, settings, ctx: ThrottleLayer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: AsyncThrottleLayer(inner, settings=settings),
        )
    ]
