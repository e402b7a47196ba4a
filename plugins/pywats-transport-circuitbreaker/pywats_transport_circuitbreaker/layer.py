"""The circuit-breaker layer, sync and async, both driven by one :class:`Breaker`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from pywats_transport import AsyncLayer, Layer, TransportError, layer_settings

from .breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSettings

STATES = (CLOSED, HALF_OPEN, OPEN)


class _Core:
    name = "circuitbreaker"
    settings: BreakerSettings

    def _setup(self, settings: BreakerSettings | None, clock: Callable[[], float], collector: Any,
               overrides: dict[str, Any]) -> None:
        self.settings = layer_settings(BreakerSettings, settings, overrides, f"{type(self).__name__} settings")
        self.breaker = Breaker(self.settings, clock)
        self.collector = collector
        if collector is not None:
            collector.observe_gauge("pywats_transport.circuit.state", self._gauge, unit="1",
                                    description="Circuit state per host: 1 for the current state, 0 otherwise.")

    def _gauge(self) -> dict[tuple[tuple[str, str], ...], int]:
        out = {}
        for host, info in self.breaker.snapshot().items():
            for state in STATES:
                out[(("server.address", host), ("state", state))] = int(info["state"] == state)
        return out

    def _forget(self) -> None:
        if self.collector is not None:
            self.collector.forget_gauge("pywats_transport.circuit.state", self._gauge)

    def _ended(self, host: str, probe: bool, exc: BaseException) -> None:
        """A request that raised: the host failed, unless nothing was learnt of it. A cancellation or an
        interrupt says nothing, nor does a layer below refusing to send (the throttle's own limit)."""
        if isinstance(exc, Exception) and not isinstance(exc, TransportError):
            self.breaker.after(host, True)
        elif probe:
            self.breaker.abandon(host)

    def stats(self) -> dict[str, Any]:
        return {"hosts": self.breaker.snapshot()}


class CircuitBreakerLayer(_Core, Layer):
    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: BreakerSettings | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics_collector: Any = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, overrides)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        probe = self.breaker.before(host)
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            self._ended(host, probe, exc)
            raise
        self.breaker.after(host, self.breaker.is_failure(response.status_code))
        return response

    def close_layer(self) -> None:
        self._forget()


class AsyncCircuitBreakerLayer(_Core, AsyncLayer):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: BreakerSettings | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics_collector: Any = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, overrides)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        probe = self.breaker.before(host)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            self._ended(host, probe, exc)
            raise
        self.breaker.after(host, self.breaker.is_failure(response.status_code))
        return response

    async def aclose_layer(self) -> None:
        self._forget()
