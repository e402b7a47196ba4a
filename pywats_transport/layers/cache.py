"""The cache layer (placeholder: forwards requests unchanged)."""

from __future__ import annotations

from ..config import CacheSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncPassThroughLayer, PassThroughLayer


class CacheLayer(PassThroughLayer):
    name = "cache"


class AsyncCacheLayer(AsyncPassThroughLayer):
    name = "cache"


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="cache",
            position=200,
            config_model=CacheSettings,
            sync_factory=lambda inner, settings, ctx: CacheLayer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: AsyncCacheLayer(inner, settings=settings),
        )
    ]
