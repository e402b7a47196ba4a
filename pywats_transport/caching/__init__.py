"""Support for the cache layer: the in-process storage and the sans-IO cache policy."""

from .memory import AsyncMemoryStorage, MemoryStorage
from .policy import CachePolicy

__all__ = ["MemoryStorage", "AsyncMemoryStorage", "CachePolicy"]
