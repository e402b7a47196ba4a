"""Entry point of the ``pywats_transport`` group: registers the circuit-breaker layer."""

from __future__ import annotations

from pywats_transport import LayerSpec, hookimpl

from .breaker import BreakerSettings
from .layer import AsyncCircuitBreakerLayer, CircuitBreakerLayer

# Inside retry (a tripped breaker is not retried), outside throttle (a rejection takes no token).
POSITION = 380


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="circuitbreaker",
            position=POSITION,
            config_model=BreakerSettings,
            sync_factory=lambda inner, settings, ctx: CircuitBreakerLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector),
            async_factory=lambda inner, settings, ctx: AsyncCircuitBreakerLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector),
            description="per-host circuit breaker: fail fast while a host keeps failing",
        )
    ]
