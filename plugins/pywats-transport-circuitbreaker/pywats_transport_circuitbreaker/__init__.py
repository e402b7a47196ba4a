"""A per-host circuit breaker for pywats-transport."""

from .breaker import Breaker, BreakerSettings, CircuitOpenError
from .layer import AsyncCircuitBreakerLayer, CircuitBreakerLayer

__all__ = ["Breaker", "BreakerSettings", "CircuitOpenError", "CircuitBreakerLayer", "AsyncCircuitBreakerLayer"]
