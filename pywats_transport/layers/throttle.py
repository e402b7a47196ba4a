"""The throttle layer: a token bucket per host (and an optional concurrency cap) in front of each attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ..caching.redis_connect import async_client, require_redis, sync_client
from ..config import ThrottleSettings
from ..errors import ThrottledError
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncLayer, Layer, layer_settings
from ..policies.retry import DEADLINE_EXTENSION, parse_retry_after
from ..policies.throttle import ThrottlePolicy
from ..streams import OnClose


class _ThrottleCore:
    name = "throttle"
    settings: ThrottleSettings

    def _setup(self, settings: ThrottleSettings | None, overrides: dict[str, Any], collector: Any,
               policy_kwargs: dict[str, Any]) -> None:
        settings = layer_settings(ThrottleSettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.collector = collector
        self.in_flight = 0
        self.fleet: Any = None
        if settings.backend == "redis":
            require_redis("throttle backend 'redis'")
            try:
                import pyrate_limiter  # noqa: F401
            except ImportError:
                raise ImportError("throttle backend 'redis' needs pyrate-limiter: "
                                  "pip install 'pywats-transport[redis]'") from None
            self.fleet = self._fleet_rate(settings)
            # While Redis is down each process takes its share of the fleet's rate and burst, so that the
            # fleet together stays within them; the share follows the stations the fleet counted (_fleet_failed).
            settings = settings.model_copy(update=_local_share(settings, settings.expected_processes))
        self.policy = ThrottlePolicy(settings, **policy_kwargs)

    def _fleet_rate(self, settings: ThrottleSettings) -> Any:
        raise NotImplementedError

    def _fleet_failed(self, exc: BaseException, host: str) -> None:
        """Redis failed or is skipped (its outage is logged by the fleet rate, once): the local share serves,
        of as many stations as the fleet counted at this host's last turn."""
        self.fleet.fallbacks += 1
        self.policy.resize(host, **_local_share(self.fleet.settings, self.fleet.share(host)))
        if self.collector is not None:
            self.collector.add_throttle_fallback(host)

    def _fleet_turn(self, request: httpx.Request) -> _FleetTurn:
        return _FleetTurn(self, request)

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

    def _wait_for(self, request: httpx.Request) -> tuple[float, float]:
        """Seconds to wait for this request's turn, and the turn's instant (to give it back if the wait is
        abandoned)."""
        host = request.url.host
        if self.policy.take_now(host):  # a token was there: no wait, so no limit to work out
            if self.collector is not None:
                self.collector.record_throttle_wait(0.0, host)
            return 0.0, 0.0
        limit, why = self._limit(request)
        turn = self.policy.turn(host, limit)
        if turn is None:
            if self.collector is not None:
                self.collector.add_throttle_rejection(host)
            needed = self.policy.would_wait(host)
            raise ThrottledError(
                f"throttle timeout: a request to {host} would wait {needed:.3f}s for a token, over {why}",
                host=host, wait=needed, limit=why, request=request,
            )
        wait = turn[0]
        if self.collector is not None:
            self.collector.record_throttle_wait(wait, host)
        return turn

    def _observe(self, request: httpx.Request, response: httpx.Response) -> tuple[float, bool]:
        """Feed the adaptive policy; returns how long the fleet should hold the host (0: not at all) and
        whether the fleet's rate for it should halve (this station's policy slowed it)."""
        status = response.status_code
        # Only throttle signals, and successes while some host is still recovering, change a bucket.
        if self.settings.adaptive and (status == 429 or status == 503 or (self.policy.attentive and status < 400)):
            slowdowns = self.policy.stats.slowdowns
            self.policy.on_response(request.url.host, status, response.headers.get("retry-after"))
            if self.fleet is not None and status in (429, 503):
                delay = parse_retry_after(response.headers.get("retry-after"), time.time())
                return (min(delay, self.settings.retry_after_max) if delay else 0.0,
                        self.policy.stats.slowdowns > slowdowns)
        return 0.0, False

    def _no_slot(self, request: httpx.Request, limit: float | None, why: str) -> ThrottledError:
        host = request.url.host
        if self.collector is not None:
            self.collector.add_throttle_rejection(host)
        self.policy.count_refusal()
        return ThrottledError(
            f"throttle timeout: a request to {host} waited {limit or 0:.3f}s for one of max_concurrency="
            f"{self.settings.max_concurrency} requests in flight to end, over {why}",
            host=host, wait=limit or 0.0, limit=why, request=request)

    def _release(self, slots: Any) -> Callable[[], None]:
        """Counts a request in flight; returns what gives its slot back."""
        self.in_flight += 1

        def release() -> None:
            self.in_flight -= 1
            slots.release()

        return release

    def stats(self) -> dict[str, Any]:
        out = self.policy.stats_dict()
        out["in_flight"] = self.in_flight
        if self.fleet is not None:
            out["fleet"] = self.fleet.stats()
        return out


class _FleetTurn:
    """One attempt waiting for the fleet's rate: what to do after each answer from Redis, decided once
    for the sync and async layers (which only differ in how they sleep)."""

    __slots__ = ("core", "request", "limit", "why", "waited")

    def __init__(self, core: _ThrottleCore, request: httpx.Request) -> None:
        self.core, self.request = core, request
        self.limit, self.why = core._limit(request)
        self.waited = 0.0

    def after(self, wait: float) -> float | None:
        """Seconds to sleep before asking again, or None: go now. Raises ThrottledError past the limit."""
        core, host = self.core, self.request.url.host
        if not wait:
            core.policy.count_fleet_turn(self.waited)
            if core.collector is not None:
                core.collector.record_throttle_wait(self.waited, host)
            return None
        if self.limit is not None and self.waited + wait > self.limit:
            core.policy.count_fleet_turn(None)
            if core.collector is not None:
                core.collector.add_throttle_rejection(host)
            raise ThrottledError(
                f"throttle timeout: a request to {host} would wait {self.waited + wait:.3f}s for a token, "
                f"over {self.why}", host=host, wait=self.waited + wait, limit=self.why, request=self.request,
            )
        self.waited += wait
        return wait


def _hold_until_closed(response: httpx.Response, release: Callable[[], None]) -> httpx.Response:
    # A request is in flight until its body is read or closed, as a connection of httpx's pool is: with
    # the slot given back at the headers, a cap of one let any number of downloads run at once.
    if response.is_closed:  # read whole already (a body given as bytes): nothing more is sent
        release()
    else:
        response.stream = OnClose(response.stream, release)
    return response


def _local_share(settings: ThrottleSettings, stations: int) -> dict[str, Any]:
    """One station's local rate and burst while Redis is down: ``local_rate`` / ``local_burst`` when set,
    else its share of the fleet's."""
    return {"rate": settings.local_rate or settings.rate / stations,
            "burst": settings.local_burst or max(1, settings.burst // stations)}


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

    def _fleet_rate(self, settings: ThrottleSettings) -> Any:
        from ..policies.fleet_throttle import FleetRate

        return FleetRate(settings, sync_client(settings.redis_url, settings.redis_timeout))

    def _held(self, slots: threading.BoundedSemaphore, request: httpx.Request) -> httpx.Response:
        release = self._release(slots)
        try:
            response = self.inner.handle_request(request)
        except BaseException:
            release()
            raise
        return _hold_until_closed(response, release)

    def close_layer(self) -> None:
        if self.fleet is not None:
            self.fleet.close()

    def _take_turn(self, request: httpx.Request) -> None:
        """Wait for this attempt's turn: the fleet's rate in Redis, or the local bucket."""
        if self.fleet is not None:
            turn = self._fleet_turn(request)
            while True:
                try:
                    pause = turn.after(self.fleet.acquire(request.url.host))
                except ThrottledError:
                    raise
                except Exception as exc:  # Redis down (or skipped after a failure): the local share
                    self._fleet_failed(exc, request.url.host)
                    break
                if pause is None:
                    return
                self._sleep(pause)
        wait, at = self._wait_for(request)
        if wait > 0:
            try:
                self._sleep(wait)
            except BaseException:  # interrupted (Ctrl-C): the turn is someone else's
                self.policy.give_back(request.url.host, at)
                raise

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._take_turn(request)
        slots = self._slots
        if slots is None:
            response = self.inner.handle_request(request)
        else:
            limit, why = self._limit(request)
            if not slots.acquire(timeout=limit):
                raise self._no_slot(request, limit, why)
            response = self._held(slots, request)
        hold, slowed = self._observe(request, response)
        if hold or slowed:
            try:
                self.fleet.signal(request.url.host, hold, slowed)
            except Exception as exc:
                self._fleet_failed(exc, request.url.host)
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

    def _fleet_rate(self, settings: ThrottleSettings) -> Any:
        from ..policies.fleet_throttle import AsyncFleetRate

        return AsyncFleetRate(settings, async_client(settings.redis_url, settings.redis_timeout))

    async def _held_async(self, slots: anyio.Semaphore, request: httpx.Request) -> httpx.Response:
        release = self._release(slots)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            release()
            raise
        return _hold_until_closed(response, release)

    async def aclose_layer(self) -> None:
        if self.fleet is not None:
            await self.fleet.aclose()

    async def _take_turn(self, request: httpx.Request) -> None:
        if self.fleet is not None:
            turn = self._fleet_turn(request)
            while True:
                try:
                    pause = turn.after(await self.fleet.acquire(request.url.host))
                except ThrottledError:
                    raise
                except Exception as exc:  # Redis down (or skipped after a failure): the local share
                    self._fleet_failed(exc, request.url.host)
                    break
                if pause is None:
                    return
                await self._sleep(pause)
        wait, at = self._wait_for(request)
        if wait > 0:
            await self._wait_turn(request, wait, at)

    async def _wait_turn(self, request: httpx.Request, wait: float, at: float) -> None:
        """Wait for the local bucket's turn; a waiter cancelled meanwhile gives its turn back."""
        try:
            await self._sleep(wait)
        except BaseException:
            self.policy.give_back(request.url.host, at)
            raise

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.fleet is not None:
            await self._take_turn(request)
        else:
            wait, at = self._wait_for(request)
            if wait > 0:  # only then a coroutine to wait in
                await self._wait_turn(request, wait, at)
        cap = self.settings.max_concurrency
        if not cap:
            response = await self.inner.handle_async_request(request)
        else:
            if self._slots is None:  # created on first use, inside the running event loop
                self._slots = anyio.Semaphore(cap, fast_acquire=True)
            limit, why = self._limit(request)
            acquired = False
            with anyio.move_on_after(limit):
                await self._slots.acquire()
                acquired = True
            if not acquired:
                raise self._no_slot(request, limit, why)
            response = await self._held_async(self._slots, request)
        hold, slowed = self._observe(request, response)
        if hold or slowed:
            try:
                await self.fleet.signal(request.url.host, hold, slowed)
            except Exception as exc:
                self._fleet_failed(exc, request.url.host)
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
