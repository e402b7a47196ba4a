"""The metrics layer (placeholder: forwards requests unchanged)."""

from __future__ import annotations

from ..config import MetricsSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncPassThroughLayer, PassThroughLayer


class MetricsLayer(PassThroughLayer):
    name = "metrics"


class AsyncMetricsLayer(AsyncPassThroughLayer):
    name = "metrics"


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="metrics",
            position=100,
            config_model=MetricsSettings,
            sync_factory=lambda inner, settings, ctx: MetricsLayer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: AsyncMetricsLayer(inner, settings=settings),
        )
    ]
