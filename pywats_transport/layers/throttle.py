"""The throttle layer: a token bucket per host (and an optional concurrency cap) in front of each attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ..config import ThrottleSettings
from ..errors import ThrottledError
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncLayer, Layer, layer_settings
from ..policies.retry import DEADLINE_EXTENSION
from ..policies.throttle import ThrottlePolicy


class _ThrottleCore:
    name = "throttle"
    settings: ThrottleSettings

    def _setup(self, settings: ThrottleSettings | None, overrides: dict[str, Any], collector: Any,
               policy_kwargs: dict[str, Any]) -> None:
        settings = layer_settings(ThrottleSettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.policy = ThrottlePolicy(settings, **policy_kwargs)
        self.collector = collector
        self.in_flight = 0

    def _limit(self, request: httpx.Request) -> tuple[float | None, str]:
        """The longest this request may wait for a token, and what sets that limit."""
        limits: list[tuple[float, str]] = []
        if self.settings.max_wait is not None:
            limits.append((self.settings.max_wait, f"max_wait={self.settings.max_wait}s"))
        timeout = request.extensions.get("timeout")
        pool = timeout.get("pool") if timeout else None
        if pool is not None:
            limits.append((pool, f"the request's pool timeout ({pool}s)"))
        deadline = request.extensions.get(DEADLINE_EXTENSION)
        if deadline is not None:
            left = max(0.0, deadline - self.policy.clock())
            limits.append((left, f"the retry deadline ({left:.3f}s left)"))
        if not limits:
            return None, ""
        return min(limits)

    def _wait_for(self, request: httpx.Request) -> float:
        host = request.url.host
        limit, why = self._limit(request)
        wait = self.policy.acquire(host, limit)
        if wait is None:
            if self.collector is not None:
                self.collector.add_throttle_rejection(host)
            needed = self.policy.would_wait(host)
            raise ThrottledError(
                f"throttle timeout: a request to {host} would wait {needed:.3f}s for a token, over {why}",
                host=host, wait=needed, limit=why, request=request,
            )
        if self.collector is not None:
            self.collector.record_throttle_wait(wait, host)
        return wait

    def _observe(self, request: httpx.Request, response: httpx.Response) -> None:
        status = response.status_code
        # Only throttle signals, and successes while some host is still recovering, change a bucket.
        if self.settings.adaptive and (status == 429 or status == 503 or (self.policy.attentive and status < 400)):
            self.policy.on_response(request.url.host, status, response.headers.get("retry-after"))

    def stats(self) -> dict[str, Any]:
        out = self.policy.stats_dict()
        out["in_flight"] = self.in_flight
        return out


class ThrottleLayer(_ThrottleCore, Layer):
    """Sync throttle layer; waits with ``time.sleep`` in the calling thread."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: ThrottleSettings | None = None,
                 metrics_collector: Any = None, sleep: Callable[[float], None] = time.sleep,
                 policy_kwargs: dict[str, Any] | None = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, overrides, metrics_collector, policy_kwargs or {})
        self._sleep = sleep
        cap = self.settings.max_concurrency
        self._slots = threading.BoundedSemaphore(cap) if cap else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        wait = self._wait_for(request)
        if wait > 0:
            self._sleep(wait)
        if self._slots is None:
            response = self.inner.handle_request(request)
        else:
            with self._slots:
                self.in_flight += 1
                try:
                    response = self.inner.handle_request(request)
                finally:
                    self.in_flight -= 1
        self._observe(request, response)
        return response


class AsyncThrottleLayer(_ThrottleCore, AsyncLayer):
    """Async throttle layer; waiting yields to the event loop."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: ThrottleSettings | None = None,
                 metrics_collector: Any = None, sleep: Callable[[float], Any] = anyio.sleep,
                 policy_kwargs: dict[str, Any] | None = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, overrides, metrics_collector, policy_kwargs or {})
        self._sleep = sleep
        self._slots: anyio.Semaphore | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        wait = self._wait_for(request)
        if wait > 0:
            await self._sleep(wait)
        cap = self.settings.max_concurrency
        if not cap:
            response = await self.inner.handle_async_request(request)
        else:
            if self._slots is None:  # created on first use, inside the running event loop
                self._slots = anyio.Semaphore(cap, fast_acquire=True)
            async with self._slots:
                self.in_flight += 1
                try:
                    response = await self.inner.handle_async_request(request)
                finally:
                    self.in_flight -= 1
        self._observe(request, response)
        return response


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="throttle",
            position=400,
            config_model=ThrottleSettings,
            sync_factory=lambda inner, settings, ctx: ThrottleLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.waiting_kwargs()
            ),
            async_factory=lambda inner, settings, ctx: AsyncThrottleLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.waiting_kwargs()
            ),
            description="token bucket per host, concurrency cap, adaptive slow-down on 429/503",
        )
    ]
