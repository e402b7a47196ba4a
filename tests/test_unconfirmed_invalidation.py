"""A write's invalidation that does not reach Redis (the station's network to Redis down for a moment,
Redis too slow to answer in time) was lost: the other stations went on serving the pre-write entry until
it expired. It is now sent again before the station's next use of Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer
from pywats_transport.metrics.collector import MetricsCollector

from .helpers import Caller, TcpProxy
from .test_index_eviction import Versioned
from .test_metrics import value

pytestmark = pytest.mark.redis


@pytest.fixture
def proxy(redis_server: Any) -> Any:
    relay = TcpProxy(redis_server.port)
    yield relay
    relay.close()


def station(mode: str, item: Versioned, url: str, collector: MetricsCollector | None = None) -> Caller:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    return Caller(mode, cls(httpx.MockTransport(item), mode="ttl", ttl=60, storage="redis", redis_url=url,
                            redis_retry_after=0.2, metrics_collector=collector))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("how", ["PUT", "invalidate", "clear"])
async def test_an_invalidation_redis_missed_is_sent_again(mode: str, how: str, redis_url: str, proxy: TcpProxy) -> None:
    item = Versioned()
    collector = MetricsCollector(isolated=True)
    writer = station(mode, item, f"redis://127.0.0.1:{proxy.port}/0", collector)  # its own way to Redis, which we cut
    reader = station(mode, item, redis_url)
    path = f"/items/{uuid.uuid4().hex}"
    try:
        assert (await reader.get(path)).json() == {"v": 0}
        assert (await writer.get(path)).extensions["caching"]["from_cache"]
        proxy.cut()
        if how == "PUT":
            assert (await writer.request("PUT", path)).status_code == 200  # WATS has it: the write succeeded
        else:
            item.version += 1
            dropped = writer.transport.invalidate(path) if how == "invalidate" else writer.transport.clear()
            assert dropped == 0  # Redis did not answer
        unconfirmed = writer.transport.stats().get("redis_invalidations_unconfirmed")
        # The writer does not read Redis while it may hold what the write dropped.
        assert (await writer.get(path)).json() == {"v": 1}
        proxy.mend()
        await asyncio.sleep(0.25)  # past retry_after
        other = await writer.get(f"/other/{uuid.uuid4().hex}")  # the writer's next use of Redis
        assert other.status_code == 200
        after = await reader.get(path)
        assert after.json() == {"v": 1} and not after.extensions["caching"]["from_cache"]
        stats = writer.transport.stats()
        assert (unconfirmed, stats["redis_invalidations_unconfirmed"], stats["redis_invalidations_replayed"]) == (1, 0, 1)
        events = {event: value(collector, "pywats_transport_cache_events_total", event=event)
                  for event in ("invalidation_unconfirmed", "invalidation_resent")}
        assert events == {"invalidation_unconfirmed": 1, "invalidation_resent": 1}
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_invalidations_never_confirmed_are_named_when_the_station_closes(
        mode: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    item = Versioned()
    writer = station(mode, item, f"redis://127.0.0.1:{proxy.port}/0")
    path = f"/items/{uuid.uuid4().hex}"
    await writer.get(path)
    proxy.cut()
    assert (await writer.request("PUT", path)).status_code == 200
    with caplog.at_level(logging.WARNING, logger="pywats_transport.cache"):
        await writer.close()
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert lost == [f"invalidations Redis never confirmed: other stations may serve the entries under {path} "
                    "until they expire"]


def _held_station(item: Versioned, proxy: TcpProxy, mode: str) -> Caller:
    """A station whose way to Redis the test holds: a call sent then waits for its answer (2 s at most)."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    return Caller(mode, cls(httpx.MockTransport(item), mode="ttl", ttl=60, storage="redis",
                            redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_timeout=2.0, redis_retry_after=0.2))


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["invalidate", "clear"])
@pytest.mark.parametrize("interruption", ["cancelled", "ctrl-c"])
async def test_an_invalidation_its_caller_gave_up_on_is_sent_again(how: str, interruption: str, redis_url: str,
                                                                   proxy: TcpProxy) -> None:
    """``ainvalidate()`` or ``aclear()`` cancelled (``asyncio.wait_for`` around it), or the sync ``invalidate()``
    or ``clear()`` interrupted by Ctrl-C, while Redis has not answered: it may not have reached Redis, and it
    is sent again before the station's next use of Redis, as one that failed is. It was forgotten: the other
    stations served the entries it was to drop until they expired."""
    import signal
    import threading

    mode = "async" if interruption == "cancelled" else "sync"
    item = Versioned()
    writer, reader = _held_station(item, proxy, mode), station(mode, item, redis_url)
    path = f"/items/{uuid.uuid4().hex}"
    layer = writer.transport
    try:
        assert (await reader.get(path)).json() == {"v": 0}
        assert (await writer.get(path)).extensions["caching"]["from_cache"]
        item.version += 1
        proxy.hold()
        if mode == "async":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(layer.ainvalidate(path) if how == "invalidate" else layer.aclear(), 0.2)
        else:
            ctrl_c = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
            ctrl_c.start()
            with pytest.raises(KeyboardInterrupt):
                layer.invalidate(path) if how == "invalidate" else layer.clear()
            ctrl_c.join()
        proxy.cut()  # what was held never reaches Redis
        proxy.mend()
        assert layer.stats()["redis_invalidations_unconfirmed"] == 1
        assert (await writer.get(f"/other/{uuid.uuid4().hex}")).status_code == 200
        after = await reader.get(path)
        assert after.json() == {"v": 1} and not after.extensions["caching"]["from_cache"]
        assert layer.stats()["redis_invalidations_replayed"] == 1
    finally:
        await writer.close()
        await reader.close()
