"""The built-in layers, sync and async; each module also registers its layer as a built-in plugin."""

from .cache import AsyncCacheLayer, CacheLayer
from .metrics import AsyncMetricsLayer, MetricsLayer
from .retry import AsyncRetryLayer, RetryLayer
from .throttle import AsyncThrottleLayer, ThrottleLayer

__all__ = [
    "CacheLayer",
    "AsyncCacheLayer",
    "RetryLayer",
    "AsyncRetryLayer",
    "ThrottleLayer",
    "AsyncThrottleLayer",
    "MetricsLayer",
    "AsyncMetricsLayer",
]
