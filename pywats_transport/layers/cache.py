"""The cache layer: hishel's CacheTransport with our storage choice, keys, invalidation and statistics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import hishel
import httpx
from hishel.httpx import AsyncCacheTransport, CacheTransport

from ..caching.coalesce import Flight, Flights
from ..caching.layer_core import CacheCore, FromInner, dated, validating, write_may_have_landed
from ..caching.memory import Record
from ..caching.policy import Plan
from ..caching.redis_fetch import FETCHES, LOOKUP, Fetches
from ..caching.refresher import REFRESH_WORKERS, Refresher
from ..config import CacheSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import CLOSED_MESSAGE, AsyncLayer, Layer


class CacheLayer(CacheCore, Layer):
    """Sync cache layer. ``CacheLayer(inner, ttl=60)`` or ``CacheLayer(settings=CacheSettings(...))``.

    ``backend`` takes a ready hishel storage instead of the one ``settings.storage`` names.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: CacheSettings | None = None,
                 backend: hishel.BaseStorage | None = None, clock: Callable[[], float] = time.time,
                 metrics_collector: Any = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, backend, False, overrides)
        self._flights = Flights(threading.Event, self.settings.coalesce_timeout)
        self._refresher = Refresher()
        self._hishel = CacheTransport(_SyncToInner(self), storage=self.storage, rfc=self._rfc)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        plan = self.policy.plan(request)
        if plan.action == "bypass":
            return self._bypassed(self.inner.handle_request(request), request)
        if plan.action == "write":
            try:
                response = self.inner.handle_request(request)
            except BaseException as exc:
                if write_may_have_landed(exc):  # no answer, but the server may have the write
                    self._fleet_drop_written(request, None)
                    self._drop_written(request, None)
                raise
            if self._shared:
                self._fleet_drop_written(request, response)
            return self._written(request, response)
        if self._direct:
            return self._handle_direct(plan, request)
        if not self._shared:
            end = self._tracked_fetch(plan, request)
            try:
                response = self._through_hishel(plan, request)
            except BaseException:
                end()
                raise
            return self._from_own_storage(response, end)
        return self._through_hishel(plan, request)

    def _through_hishel(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        """A lookup that hishel carries out, on its SQLite storage or on Redis (with its near cache)."""
        if self.near is not None and (hit := self._near_hit(plan, request)) is not None:
            return hit
        near_token = self._fetching(plan, request)
        record: Record | None = None
        if plan.refresh:
            self._remove_now(plan.key)
        elif self._fleet_reads_first(request):
            try:
                record = self.storage.find(plan.key, request.method, request.headers, str(request.url))
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(self.inner.handle_request(request), request)
            if (hit := self._fleet_hit(plan, request, self._timed(record), near_token)) is not None:
                return hit
        elif self._own_reads_first(request) and not plan.revalidate:
            try:
                entry = self._own_latest(self.storage.get_entries(plan.key), request)
                record = None if entry is None else self._own_record(entry, b"".join(entry.response.stream))
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(self.inner.handle_request(request), request)
            if (hit := self._fleet_hit(plan, request, record, None)) is not None:
                return hit
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            flight = self._follow(plan, flight)  # then look up what the leader stored
        lookup = self._lookup(plan, request, not plan.refresh and (flight is None or flight.leader)) \
            if self._fleet_lookup else None
        context = LOOKUP.set(lookup)
        fetches = FETCHES.set(Fetches(plan.key, str(request.url), request.headers) if self._shared else None)
        try:
            response = self._hishel.handle_request(request)
        except FromInner as wrapped:
            if self._shared:
                self.storage.release(plan.key)
            if self._stale_wanted(record, wrapped.original):
                record = self._stale_entry(plan, request)
            if (stale := self._fleet_fallback(plan, request, record, flight, wrapped.original)) is not None:
                return stale
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:  # the storage failed: the request still gets its answer
            self._flights.land(flight, settled=True)  # one at a time would not mend the storage
            self._storage_failed(exc)
            return self._bypassed(self.inner.handle_request(request), request)
        except BaseException:  # interrupted (Ctrl-C): the others fetch at once, not after the lock's expiry
            if self._shared:
                self.storage.release(plan.key)
            self._flights.land(flight)
            raise
        finally:
            LOOKUP.reset(context)
            FETCHES.reset(fetches)
        if lookup is not None and not lookup.stored or self._refused(request):
            response.extensions["caching"] = {**response.extensions["caching"], "stored": False}
        if (self._shared or self._own) and not response.extensions["caching"].get("stored"):
            if self._shared:
                self.storage.release(plan.key)  # nothing will be stored: the fleet need not wait
            if self._stale_wanted(record, response):
                record = self._stale_entry(plan, request)
            if (stale := self._fleet_fallback(plan, request, record, flight, response)) is not None:
                response.close()
                return stale
        if self.near is not None:
            self._near_keep(plan, request, response, near_token)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response, self._body_bound)

    def _follow(self, plan: Plan, flight: Flight) -> Flight:
        """A follower on hishel's path waits for the fetch it follows (see :meth:`_woken`)."""
        deadline = time.monotonic() + self.settings.coalesce_timeout
        while True:
            flight.event.wait(max(0.0, deadline - time.monotonic()))
            go, flight = self._woken(plan, flight, deadline)
            if go:
                return flight

    def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, stale, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            deadline = time.monotonic() + self.settings.coalesce_timeout
            while flight is not None and not flight.leader:
                flight.event.wait(max(0.0, deadline - time.monotonic()))
                hit, stale, flight = self._followed(plan, request, deadline)
                if hit is not None:
                    return hit
        token = self._fetching(plan, request)
        try:
            with validating(request, stale if self.policy.rfc else None):
                response = self.inner.handle_request(request)
        except BaseException as exc:
            return self._origin_failed(plan, request, stale, flight, exc, token)
        if self._answer_is_spent(response, stale):
            response.close()
        return self._direct_end(plan, request, response, flight, stale, token)

    def _stale_entry(self, plan: Plan, request: httpx.Request) -> Record | None:
        """The entry hishel found stale, or did not show (SQLite, ttl mode), for a failed origin; None if the
        storage fails too."""
        try:
            if self._own:
                entry = self._own_choice(self.storage.get_entries(plan.key), request)
                return None if entry is None else self._own_record(entry, b"".join(entry.response.stream))
            return self._timed_by_headers(self.storage.find(plan.key, request.method, request.headers,
                                                            str(request.url)))
        except Exception as exc:
            self._storage_failed(exc)
            return None

    def _remove_now(self, key: str) -> None:
        try:
            for entry in self.storage.get_entries(key):
                self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    def _spawn_refresh(self, plan: Plan, original: httpx.Request, stale: Record) -> None:
        def run() -> None:
            end = None
            try:
                request = self._refresh_request(original)
                token = self._refresh_token(plan, request)
                lease = self.storage.take_lease(plan.key, str(request.url)) if self._shared else None
                end = self._tracked_fetch(plan, request) if self._own else None
                with validating(request, stale if self.policy.rfc else None):
                    response = self.inner.handle_request(request)
                try:
                    response.read()
                    if (confirmed := self._fleet_revalidated(response, stale)) is not None:
                        self.storage.update_headers(*self._own_revalidated(confirmed))
                    elif lease is not None and (put := self._fleet_put(plan, request, response)) is not None:
                        self.storage.put(**put, lease=lease)
                    elif self._views is not None and (own := self._own_put(plan, request, response,
                                                                           iter([response.content]))) is not None:
                        for _ in self._views[1].create_entry(**own).response.stream:
                            pass  # stored as it is read
                    self._refreshed(plan, request, response, stale, token)
                finally:
                    response.close()
            except Exception:  # the stale entry stays; the next lookup in the window tries again
                self.policy.stats.refresh_failures += 1
            finally:
                if end is not None:
                    end()
                self._refresh_done(plan.key)

        self._refresher.submit(run)

    def _fleet_drop_written(self, request: httpx.Request, response: httpx.Response | None) -> None:
        """Before the write's answer returns: no process reads the pre-write entry after it."""
        if self._shared:
            targets = self.policy.write_targets(request, response)
            for origin, path in targets:
                try:
                    self.storage.invalidate_prefix(origin, path)
                except Exception as exc:
                    self._fleet_failed(exc)
            self._near_drop_now(targets)

    def close_layer(self) -> None:
        self._refresher.close()
        if self._near_sub is not None:
            self._near_sub.close()
        self.storage.close()


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    """A body as hishel's asyncio storage reads a stream."""
    yield body


class AsyncCacheLayer(CacheCore, AsyncLayer):
    """Async cache layer; the memory storage never leaves the event loop's thread."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: CacheSettings | None = None,
                 backend: hishel.AsyncBaseStorage | None = None, clock: Callable[[], float] = time.time,
                 metrics_collector: Any = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, backend, True, overrides)
        self._flights = Flights(anyio.Event, self.settings.coalesce_timeout)
        self._background: set[asyncio.Task[None]] = set()
        self._refresh_slots: asyncio.Semaphore | None = None
        self._hishel = AsyncCacheTransport(_AsyncToInner(self), storage=self.storage, rfc=self._rfc)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        plan = self.policy.plan(request)
        if plan.action == "bypass":
            return self._bypassed(await self.inner.handle_async_request(request), request)
        if plan.action == "write":
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                # No answer, but the server may have the write: an error after sending, or a caller that
                # gave up waiting (a timeout around the call cancels it). Dropping is bounded by Redis's
                # timeout, shielded so that the cancellation does not cut it short.
                if write_may_have_landed(exc):
                    with anyio.CancelScope(shield=True):
                        await self._fleet_drop_written(request, None)
                    self._drop_written(request, None)
                raise
            if self._shared:  # a coroutine less for every write to an in-process storage
                await self._fleet_drop_written(request, response)
            return self._written(request, response)
        if self._direct:
            return await self._handle_direct(plan, request)
        if not self._shared:
            end = self._tracked_fetch(plan, request)
            try:
                response = await self._through_hishel(plan, request)
            except BaseException:
                end()
                raise
            return self._from_own_storage(response, end)
        return await self._through_hishel(plan, request)

    async def _through_hishel(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        """As the sync layer's."""
        if self.near is not None and (hit := self._near_hit(plan, request)) is not None:
            return hit
        near_token = self._fetching(plan, request)
        record: Record | None = None
        if plan.refresh:
            await self._remove_now(plan.key)
        elif self._fleet_reads_first(request):
            try:
                record = await self.storage.find(plan.key, request.method, request.headers, str(request.url))
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(await self.inner.handle_async_request(request), request)
            if (hit := self._fleet_hit(plan, request, self._timed(record), near_token)) is not None:
                return hit
        elif self._own_reads_first(request) and not plan.revalidate:
            try:
                entry = self._own_latest(await self.storage.get_entries(plan.key), request)
                record = None if entry is None else self._own_record(
                    entry, b"".join([chunk async for chunk in entry.response.stream]))
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(await self.inner.handle_async_request(request), request)
            if (hit := self._fleet_hit(plan, request, record, None)) is not None:
                return hit
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            flight = await self._follow(plan, flight)  # then look up what the leader stored
        lookup = self._lookup(plan, request, not plan.refresh and (flight is None or flight.leader)) \
            if self._fleet_lookup else None
        context = LOOKUP.set(lookup)
        fetches = FETCHES.set(Fetches(plan.key, str(request.url), request.headers) if self._shared else None)
        try:
            response = await self._hishel.handle_async_request(request)
        except FromInner as wrapped:
            if self._shared:
                await self.storage.release(plan.key)
            if self._stale_wanted(record, wrapped.original):
                record = await self._stale_entry(plan, request)
            if (stale := self._fleet_fallback(plan, request, record, flight, wrapped.original)) is not None:
                return stale
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:  # as the sync layer's
            self._flights.land(flight, settled=True)
            self._storage_failed(exc)
            return self._bypassed(await self.inner.handle_async_request(request), request)
        except BaseException:
            # Cancelled (a timeout around the call): the others, here and in the fleet, fetch at once
            # instead of waiting out the lock. Shielded, so the cancellation does not cut the release short.
            if self._shared:
                with anyio.CancelScope(shield=True):
                    await self.storage.release(plan.key)
            self._flights.land(flight)
            raise
        finally:
            LOOKUP.reset(context)
            FETCHES.reset(fetches)
        if lookup is not None and not lookup.stored or self._refused(request):
            response.extensions["caching"] = {**response.extensions["caching"], "stored": False}
        if (self._shared or self._own) and not response.extensions["caching"].get("stored"):
            if self._shared:
                await self.storage.release(plan.key)
            if self._stale_wanted(record, response):
                record = await self._stale_entry(plan, request)
            if (stale := self._fleet_fallback(plan, request, record, flight, response)) is not None:
                await response.aclose()
                return stale
        if self.near is not None:
            self._near_keep(plan, request, response, near_token)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response, self._body_bound)

    async def _follow(self, plan: Plan, flight: Flight) -> Flight:
        """As the sync layer's."""
        deadline = time.monotonic() + self.settings.coalesce_timeout
        while True:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await flight.event.wait()
            go, flight = self._woken(plan, flight, deadline)
            if go:
                return flight

    async def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, stale, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            deadline = time.monotonic() + self.settings.coalesce_timeout
            while flight is not None and not flight.leader:
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await flight.event.wait()
                hit, stale, flight = self._followed(plan, request, deadline)
                if hit is not None:
                    return hit
        token = self._fetching(plan, request)
        try:
            with validating(request, stale if self.policy.rfc else None):
                response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            return self._origin_failed(plan, request, stale, flight, exc, token)
        if self._answer_is_spent(response, stale):
            await response.aclose()
        return self._direct_end(plan, request, response, flight, stale, token)

    async def _stale_entry(self, plan: Plan, request: httpx.Request) -> Record | None:
        """As the sync layer's."""
        try:
            if self._own:
                entry = self._own_choice(await self.storage.get_entries(plan.key), request)
                if entry is None:
                    return None
                return self._own_record(entry, b"".join([chunk async for chunk in entry.response.stream]))
            return self._timed_by_headers(await self.storage.find(plan.key, request.method, request.headers,
                                                                  str(request.url)))
        except Exception as exc:
            self._storage_failed(exc)
            return None

    async def _remove_now(self, key: str) -> None:
        try:
            for entry in await self.storage.get_entries(key):
                await self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    def _spawn_refresh(self, plan: Plan, original: httpx.Request, stale: Record) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh(plan, original, stale), name="pywats-cache-refresh")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, plan: Plan, original: httpx.Request, stale: Record | None) -> None:
        if self._refresh_slots is None:  # made on first use, inside the running event loop
            self._refresh_slots = asyncio.Semaphore(REFRESH_WORKERS)
        try:
            async with self._refresh_slots:
                await self._refresh_once(plan, original, stale)
        except Exception:  # the stale entry stays; the next lookup in the window tries again
            self.policy.stats.refresh_failures += 1
        finally:
            self._refresh_done(plan.key)

    async def _refresh_once(self, plan: Plan, original: httpx.Request, stale: Record | None) -> None:
        request = self._refresh_request(original)
        token = self._refresh_token(plan, request)
        lease = await self.storage.take_lease(plan.key, str(request.url)) if self._shared else None
        end = self._tracked_fetch(plan, request) if self._own else None
        try:
            with validating(request, stale if self.policy.rfc else None):
                response = await self.inner.handle_async_request(request)
            try:
                await response.aread()
                if (confirmed := self._fleet_revalidated(response, stale)) is not None:
                    await self.storage.update_headers(*self._own_revalidated(confirmed))
                elif lease is not None and (put := self._fleet_put(plan, request, response)) is not None:
                    await self.storage.put(**put, lease=lease)
                elif self._views is not None and (own := self._own_put(plan, request, response,
                                                                       _chunks(response.content))) is not None:
                    async for _ in (await self._views[1].create_entry(**own)).response.stream:
                        pass  # stored as it is read
                self._refreshed(plan, request, response, stale, token)
            finally:
                await response.aclose()
        finally:
            if end is not None:
                end()

    async def _fleet_drop_written(self, request: httpx.Request, response: httpx.Response | None) -> None:
        """Before the write's answer returns: no process reads the pre-write entry after it."""
        if self._shared:
            targets = self.policy.write_targets(request, response)
            for origin, path in targets:
                try:
                    await self.storage.invalidate_prefix(origin, path)
                except Exception as exc:
                    self._fleet_failed(exc)
            self._near_drop_now(targets)

    async def ainvalidate(self, prefix: str) -> int:
        """As :meth:`invalidate`, on the event loop: a shared storage (Redis) is awaited, not waited for."""
        if not self._shared:
            return self._invalidate_here(prefix)
        place = self._near_before_invalidate(prefix)
        try:
            return int(await self.storage.invalidate_prefix(*place))
        except Exception as exc:
            self._storage_failed(exc)
            return 0

    async def aclear(self) -> int:
        """As :meth:`clear`, on the event loop."""
        if not self._shared:
            return self._clear_here()
        if self.near is not None:
            self.near.clear()
        try:
            return int(await self.storage.clear())
        except Exception as exc:
            self._storage_failed(exc)
            return 0

    async def aclose_layer(self) -> None:
        # Background refreshes belong to the layer: they end with it.
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._near_sub is not None:
            self._near_sub.close()
        await self.storage.close()


class _SyncToInner(httpx.BaseTransport):
    def __init__(self, layer: CacheLayer) -> None:
        self.layer = layer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.layer._shared:  # before the origin answers: a write meanwhile withdraws the store (redis_keys)
            self.layer.storage.lease(request.extensions["caching"]["key"], str(request.url))
        try:
            return dated(self.layer.inner.handle_request(request))
        except Exception as exc:
            raise FromInner(exc) from exc


class _AsyncToInner(httpx.AsyncBaseTransport):
    def __init__(self, layer: AsyncCacheLayer) -> None:
        self.layer = layer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.layer._shared:  # as in the sync layer
            await self.layer.storage.lease(request.extensions["caching"]["key"], str(request.url))
        try:
            return dated(await self.layer.inner.handle_async_request(request))
        except Exception as exc:
            raise FromInner(exc) from exc


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="cache",
            position=200,
            config_model=CacheSettings,
            sync_factory=lambda inner, settings, ctx: CacheLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.clock_kwargs()
            ),
            async_factory=lambda inner, settings, ctx: AsyncCacheLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.clock_kwargs()
            ),
            description="HTTP cache on hishel: memory (LRU), SQLite or Redis storage",
        )
    ]
