"""pywats-transport: stackable httpx transport layers and a WATS client built on them."""

from __future__ import annotations

from ._version import __version__
from .builder import build_async_transport, build_transport
from .config import (
    CacheSettings,
    MetricsSettings,
    PluginSettings,
    RetrySettings,
    ThrottleSettings,
    TransportConfig,
)
from .errors import ConfigError, PluginError, ThrottledError, TransportError
from .hookspecs import BuildContext, LayerSpec, hookimpl
from .layer import AsyncLayer, Layer, layer_settings
from .layers import (
    AsyncCacheLayer,
    AsyncMetricsLayer,
    AsyncRetryLayer,
    AsyncThrottleLayer,
    CacheLayer,
    MetricsLayer,
    RetryLayer,
    ThrottleLayer,
)
from .plugins import PluginManager, get_plugin_manager
from .stack import AsyncTransportStack, TransportStack
from .wats import WATS, AsyncWATS

__all__ = [
    "__version__",
    "build_transport",
    "build_async_transport",
    "TransportConfig",
    "CacheSettings",
    "RetrySettings",
    "ThrottleSettings",
    "MetricsSettings",
    "PluginSettings",
    "ConfigError",
    "PluginError",
    "ThrottledError",
    "TransportError",
    "LayerSpec",
    "BuildContext",
    "hookimpl",
    "Layer",
    "AsyncLayer",
    "layer_settings",
    "CacheLayer",
    "AsyncCacheLayer",
    "RetryLayer",
    "AsyncRetryLayer",
    "ThrottleLayer",
    "AsyncThrottleLayer",
    "MetricsLayer",
    "AsyncMetricsLayer",
    "TransportStack",
    "AsyncTransportStack",
    "PluginManager",
    "get_plugin_manager",
    "AsyncWATS",
    "WATS",
]
