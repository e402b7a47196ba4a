"""The retry layer (placeholder: forwards requests unchanged)."""

from __future__ import annotations

from ..config import RetrySettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncPassThroughLayer, PassThroughLayer


class RetryLayer(PassThroughLayer):
    name = "retry"


class AsyncRetryLayer(AsyncPassThroughLayer):
    name = "retry"


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="retry",
            position=300,
            config_model=RetrySettings,
            sync_factory=lambda inner, settings, ctx: RetryLayer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: AsyncRetryLayer(inner, settings=settings),
        )
    ]
