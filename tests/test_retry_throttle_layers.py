from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pywats_transport import ThrottledError, build_async_transport, build_transport
from pywats_transport._server import BackgroundServer
from pywats_transport.emulator.proxy import FaultProxy
from pywats_transport.layers.retry import AsyncRetryLayer, RetryLayer
from pywats_transport.layers.throttle import AsyncThrottleLayer, ThrottleLayer

from .helpers import Caller


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Script:
    """Answers with the scripted statuses (or raises scripted exceptions), then 200; records body closes."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.closed = 0
        self.closed_at_call: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.closed_at_call.append(self.closed)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception):
            raise step
        script = self

        class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
            def __iter__(self):  # type: ignore[no-untyped-def]
                yield b"{}"

            async def __aiter__(self):  # type: ignore[no-untyped-def]
                yield b"{}"

            def close(self) -> None:
                script.closed += 1

            async def aclose(self) -> None:
                script.closed += 1

        return httpx.Response(step, stream=Body(), headers={"Retry-After": "0"} if step == 429 else {})


def sleeps() -> tuple[list[float], Any, Any]:
    log: list[float] = []

    def sync_sleep(d: float) -> None:
        log.append(d)

    async def async_sleep(d: float) -> None:
        log.append(d)

    return log, sync_sleep, async_sleep


def retry_layer(mode: str, handler: Any, **kw: Any) -> tuple[Caller, Any, list[float]]:
    log, s, a = sleeps()
    if mode == "sync":
        layer: Any = RetryLayer(httpx.MockTransport(handler), sleep=s, jitter="none", backoff_base=0.1, **kw)
    else:
        layer = AsyncRetryLayer(httpx.MockTransport(handler), sleep=a, jitter="none", backoff_base=0.1, **kw)
    return Caller(mode, layer), layer, log


@pytest.mark.anyio
async def test_retries_statuses_until_success_and_closes_failed_bodies(mode: str) -> None:
    script = Script(503, 502)
    caller, layer, log = retry_layer(mode, script)
    r = await caller.get("/x")
    assert r.status_code == 200 and r.extensions["retry"] == {"attempts": 3}
    assert log == [0.1, 0.2] and script.closed_at_call == [0, 1, 2]  # each failed body closed before the next try
    stats = layer.stats()
    assert (stats["attempts"], stats["retries"], stats["retries_by_reason"]) == (3, 2, {"status_503": 1, "status_502": 1})
    assert stats["backoff_seconds"] == pytest.approx(0.3)
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("override", "said"), [({"max_attempt": 5}, "unknown key 'max_attempt'; allowed keys: "
                                                 "enabled, idempotent, max_attempts"),
                                                (False, "must be a dict with keys among enabled, idempotent")])
async def test_a_misspelt_retry_extension_is_refused_by_name(mode: str, override: Any, said: str) -> None:
    """``{"max_attempt": 5}`` retried as often as the settings say, silently."""
    script = Script(503, 503)
    caller, _, _ = retry_layer(mode, script)
    with pytest.raises(ValueError, match=f"request extension retry.*{said}"):
        await caller.get("/x", extensions={"retry": override})
    assert script.calls == 0
    await caller.close()


@pytest.mark.anyio
async def test_exhausted_returns_last_response(mode: str) -> None:
    caller, layer, _ = retry_layer(mode, Script(503, 503, 500))
    r = await caller.get("/x")
    assert r.status_code == 500 and r.extensions["retry"]["attempts"] == 3
    assert layer.stats()["gave_up"] == 1
    await caller.close()


@pytest.mark.anyio
async def test_exhausted_reraises_same_exception_type(mode: str) -> None:
    caller, _, _ = retry_layer(mode, Script(*(httpx.ConnectError("refused") for _ in range(3))))
    with pytest.raises(httpx.ConnectError) as info:
        await caller.get("/x")
    assert info.value.retry_attempts == 3  # type: ignore[attr-defined]
    await caller.close()


@pytest.mark.anyio
async def test_post_not_resent_after_503_but_resent_after_connect_error(mode: str) -> None:
    script = Script(503)
    caller, _, _ = retry_layer(mode, script)
    assert (await caller.request("POST", "/r", json={})).status_code == 503 and script.calls == 1
    script2 = Script(httpx.ConnectError("refused"))
    caller2, _, _ = retry_layer(mode, script2)
    assert (await caller2.request("POST", "/r", json={})).status_code == 200 and script2.calls == 2
    await caller.close()
    await caller2.close()


def throttle_layer(mode: str, **kw: Any) -> tuple[Caller, Any, list[float]]:
    log, s, a = sleeps()
    handler = httpx.MockTransport(lambda r: httpx.Response(200))
    layer: Any = ThrottleLayer(handler, sleep=s, **kw) if mode == "sync" else AsyncThrottleLayer(handler, sleep=a, **kw)
    return Caller(mode, layer), layer, log


@pytest.mark.anyio
async def test_throttle_spaces_requests_and_reports(mode: str) -> None:
    caller, layer, log = throttle_layer(mode, rate=100, burst=2)
    for _ in range(4):
        await caller.get("/")
    assert log[0] == pytest.approx(0.01, abs=2e-3) and len(log) == 2
    stats = layer.stats()
    assert stats["requests"] == 4 and stats["waited"] == 2 and stats["rate_per_host"] == {"test": 100.0}
    await caller.close()


@pytest.mark.anyio
async def test_throttle_max_wait_fails_fast_with_clear_error(mode: str) -> None:
    caller, layer, _ = throttle_layer(mode, rate=1, burst=1, max_wait=0.1)
    await caller.get("/")
    with pytest.raises(ThrottledError, match=r"request to test would wait [01]\.\d+s for a token, over max_wait=0\.1s"):
        await caller.get("/")
    assert layer.stats()["rejections"] == 1
    await caller.close()


@pytest.mark.anyio
async def test_async_waiters_cancelled_before_their_turns_give_them_back() -> None:
    """``asyncio.wait_for`` around a throttled call (or a task cancelled) kept its turn reserved: ten
    callers who gave up pushed the next request's turn ten seconds out, and callers timing out faster
    than the rate starved every request that came after them."""
    clock = [100.0]
    asked: list[float] = []
    forever = anyio.Event()

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) <= 10:
            await forever.wait()  # these callers give up before their turn

    layer = AsyncThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), rate=1, burst=1, sleep=sleep,
                               policy_kwargs={"clock": lambda: clock[0]})
    async with httpx.AsyncClient(transport=layer, base_url="http://h", timeout=60) as client:
        await client.get("/")  # the burst
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(client.get, "/")
            while len(asked) < 10:
                await anyio.sleep(0.001)
            clock[0] += 0.5
            tg.cancel_scope.cancel()
        assert (await client.get("/")).status_code == 200
    assert asked[:10] == [pytest.approx(float(n)) for n in range(1, 11)]
    assert asked[10] == pytest.approx(0.5)  # the first turn given back; before: 10.5


def test_a_sync_waiter_interrupted_before_its_turn_gives_it_back() -> None:
    clock = [100.0]
    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) == 1:
            raise KeyboardInterrupt  # Ctrl-C while it waits

    layer = ThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), rate=1, burst=1, sleep=sleep,
                          policy_kwargs={"clock": lambda: clock[0]})
    with httpx.Client(transport=layer, base_url="http://h") as client:
        client.get("/")
        with pytest.raises(KeyboardInterrupt):
            client.get("/")
        client.get("/")
    assert asked == [pytest.approx(1.0), pytest.approx(1.0)]  # before: the second waited 2 s


@pytest.mark.anyio
async def test_async_waiting_does_not_block_the_event_loop() -> None:
    layer = AsyncThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), rate=5, burst=1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with httpx.AsyncClient(transport=layer) as client, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        started = time.monotonic()
        await client.get("http://h/")
        await client.get("http://h/")  # waits ~0.2 s for a token
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert elapsed >= 0.18 and ticks >= 5  # the loop kept running while a request waited


@pytest.mark.anyio
async def test_async_waiters_are_served_in_arrival_order() -> None:
    layer = AsyncThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), rate=50, burst=1)
    done: list[int] = []

    async def one(i: int, client: httpx.AsyncClient) -> None:
        await client.get("http://h/")
        done.append(i)

    async with httpx.AsyncClient(transport=layer) as client, anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(one, i, client)
            await anyio.sleep(0)
    assert done == list(range(10))


@pytest.mark.anyio
async def test_concurrency_cap(mode: str) -> None:
    peak, current, lock = 0, 0, threading.Lock()

    async def slow_async(request: httpx.Request) -> httpx.Response:
        nonlocal peak, current
        current += 1
        peak = max(peak, current)
        await anyio.sleep(0.02)
        current -= 1
        return httpx.Response(200)

    def slow_sync(request: httpx.Request) -> httpx.Response:
        nonlocal peak, current
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.02)
        with lock:
            current -= 1
        return httpx.Response(200)

    if mode == "async":
        layer = AsyncThrottleLayer(httpx.MockTransport(slow_async), rate=1000, burst=100, max_concurrency=2)
        async with httpx.AsyncClient(transport=layer) as client, anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client.get, "http://h/")
    else:
        from concurrent.futures import ThreadPoolExecutor

        sync_layer = ThrottleLayer(httpx.MockTransport(slow_sync), rate=1000, burst=100, max_concurrency=2)
        with httpx.Client(transport=sync_layer) as client, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.get("http://h/"), range(8)))
    assert peak == 2


def streaming_app() -> tuple[Starlette, dict[str, int]]:
    """A download of ten slow chunks; counts the bodies being sent at once."""
    from starlette.responses import StreamingResponse

    seen = {"current": 0, "peak": 0}

    async def download(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            seen["current"] += 1
            seen["peak"] = max(seen["peak"], seen["current"])
            try:
                for _ in range(10):
                    await anyio.sleep(0.01)
                    yield b"x" * 1000
            finally:
                seen["current"] -= 1

        return StreamingResponse(chunks())

    return Starlette(routes=[Route("/download", download)]), seen


@pytest.mark.anyio
async def test_a_request_holds_its_concurrency_slot_until_its_body_is_read(mode: str) -> None:
    """The slot was given back as soon as the headers came: with ``max_concurrency=1``, four downloads
    sent their bodies at once. A request is in flight until its response is closed (read, or closed
    unread), as in httpx's connection pool."""
    app, seen = streaming_app()
    with BackgroundServer(app) as server:
        sizes: list[int] = []
        if mode == "async":
            layer: Any = AsyncThrottleLayer(httpx.AsyncHTTPTransport(), rate=1000, burst=100, max_concurrency=1)
            async with httpx.AsyncClient(transport=layer, base_url=server.url) as client:
                async def fetch() -> None:
                    sizes.append(len((await client.get("/download")).content))

                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(fetch)
                async with client.stream("GET", "/download") as unread:  # closed unread: the slot comes back
                    assert unread.status_code == 200
                sizes.append(len((await client.get("/download")).content))
        else:
            from concurrent.futures import ThreadPoolExecutor

            layer = ThrottleLayer(httpx.HTTPTransport(), rate=1000, burst=100, max_concurrency=1)
            with httpx.Client(transport=layer, base_url=server.url) as client, ThreadPoolExecutor(4) as pool:
                sizes += pool.map(lambda _: len(client.get("/download").content), range(4))
                with client.stream("GET", "/download") as unread:
                    assert unread.status_code == 200
                sizes.append(len(client.get("/download").content))
        assert sizes == [10_000] * 5
        assert seen["peak"] == 1
        assert layer.stats()["in_flight"] == 0


@pytest.mark.anyio
async def test_a_wait_for_room_under_the_concurrency_cap_is_bounded_as_a_token_wait_is(mode: str) -> None:
    """With the cap's one request in flight, the next waited for as long as that one took, whatever its
    pool timeout or the throttle's ``max_wait`` said; now it fails at its limit, as a token wait does."""
    app, _ = streaming_app()
    pool = httpx.Timeout(10.0, pool=0.2)
    with BackgroundServer(app) as server:
        if mode == "async":
            layer: Any = AsyncThrottleLayer(httpx.AsyncHTTPTransport(), rate=1000, burst=100, max_concurrency=1)
            async with httpx.AsyncClient(transport=layer, base_url=server.url) as client:
                async with client.stream("GET", "/download"):
                    started = time.monotonic()
                    with pytest.raises(ThrottledError, match="max_concurrency=1") as info:
                        await client.get("/download", timeout=pool)
                    waited = time.monotonic() - started
                assert len((await client.get("/download", timeout=pool)).content) == 10_000
        else:
            layer = ThrottleLayer(httpx.HTTPTransport(), rate=1000, burst=100, max_concurrency=1)
            with httpx.Client(transport=layer, base_url=server.url) as client:
                with client.stream("GET", "/download"):
                    started = time.monotonic()
                    with pytest.raises(ThrottledError, match="max_concurrency=1") as info:
                        client.get("/download", timeout=pool)
                    waited = time.monotonic() - started
                assert len(client.get("/download", timeout=pool).content) == 10_000
    assert 0.15 < waited < 2.0
    assert info.value.limit == "the request's pool timeout (0.2s)" and info.value.host == "127.0.0.1"
    assert layer.stats()["rejections"] == 1 and layer.stats()["in_flight"] == 0


# -- end to end against a real loopback server -------------------------------------------------

def flaky_app() -> tuple[Starlette, dict[str, int]]:
    hits = {"unavailable": 0, "limited": 0, "ok": 0}

    async def unavailable(request: Request) -> JSONResponse:
        hits["unavailable"] += 1
        if hits["unavailable"] <= 2:
            return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"ok": True})

    async def limited(request: Request) -> JSONResponse:
        hits["limited"] += 1
        if hits["limited"] == 1:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0"})
        return JSONResponse({"ok": True})

    async def ok(request: Request) -> JSONResponse:
        hits["ok"] += 1
        return JSONResponse({"ok": True, "method": request.method})

    routes = [Route("/unavailable", unavailable), Route("/limited", limited), Route("/ok", ok, methods=["GET", "POST"])]
    return Starlette(routes=routes), hits


@pytest.mark.anyio
async def test_end_to_end_503_429_with_retry_after_and_dropped_connections(mode: str) -> None:
    app, hits = flaky_app()
    with BackgroundServer(app) as server:
        drops = itertools.chain([0.0, 0.0], itertools.repeat(1.0))  # the first two requests are dropped
        with FaultProxy(server.port, drop_rate=0.5, rng=lambda: next(drops)) as proxy:
            flags: dict[str, Any] = {"enable_cache": False, "retry": {"backoff_base": 0.01, "backoff_max": 0.2},
                                     "enable_throttling": True}
            if mode == "sync":
                stack: Any = build_transport(**flags)
            else:
                stack = build_async_transport(**flags)
            caller = Caller(mode, stack, base_url=proxy.url)
            r = await caller.get("/ok")  # dropped twice, then through
            assert r.status_code == 200 and r.extensions["retry"]["attempts"] == 3 and proxy.dropped == 2
            started = time.monotonic()
            r = await caller.get("/unavailable")
            assert r.status_code == 200 and hits["unavailable"] == 3
            assert time.monotonic() - started >= 0.4  # Retry-After: 1, capped at backoff_max 0.2, twice
            r = await caller.get("/limited")
            assert r.status_code == 200 and hits["limited"] == 2
            reasons = stack.stats()["retry"]["retries_by_reason"]
            assert reasons == {"connection_dropped": 2, "status_503": 2, "status_429": 1}
            assert stack.stats()["throttle"]["slowdowns"] == 2  # two 503s with Retry-After: 1; one 429 asked for no wait
            await caller.close()


@pytest.mark.anyio
async def test_end_to_end_dropped_post_is_not_resent(mode: str) -> None:
    app, hits = flaky_app()
    with BackgroundServer(app) as server, FaultProxy(server.port, drop_rate=1.0) as proxy:
        stack: Any = build_transport(enable_cache=False) if mode == "sync" else build_async_transport(enable_cache=False)
        caller = Caller(mode, stack, base_url=proxy.url)
        with pytest.raises(httpx.RemoteProtocolError):
            await caller.request("POST", "/ok", json={})
        assert proxy.dropped == 1
        await caller.close()


@pytest.mark.anyio
async def test_every_attempt_takes_a_throttle_token(mode: str) -> None:
    script = Script(503, 502)
    flags: dict[str, Any] = {"inner": httpx.MockTransport(script), "enable_cache": False,
                             "retry": {"backoff_base": 0.001}, "throttle": {"enabled": True, "rate": 1000, "burst": 1000}}
    stack: Any = build_transport(**flags) if mode == "sync" else build_async_transport(**flags)
    caller = Caller(mode, stack)
    assert (await caller.get("/x")).status_code == 200
    stats = stack.stats()
    assert stats["retry"]["attempts"] == 3 and stats["throttle"]["requests"] == 3 and script.calls == 3
    await caller.close()


def test_fault_proxy_stop_leaves_no_pending_handler(caplog: pytest.LogCaptureFixture) -> None:
    import gc
    import socket

    app, _ = flaky_app()
    with BackgroundServer(app) as server:
        proxy = FaultProxy(server.port).start()
        with socket.create_connection((proxy.host, proxy.port)) as peer:
            peer.sendall(b"GET /ok HTTP/1.1\r\n")  # a head never finished: its handler waits
            time.sleep(0.1)
            with caplog.at_level("ERROR", logger="asyncio"):
                proxy.stop()
                gc.collect()
    assert not [r for r in caplog.records if "pending" in r.getMessage()]


def test_fault_proxy_stop_also_ends_handlers_started_while_it_stops(caplog: pytest.LogCaptureFixture) -> None:
    """A connection accepted just before the listener closed starts its handler while the first ones are
    being cancelled: that one is ended too, not left pending when the loop closes."""
    import asyncio
    import gc
    import socket

    class Late(FaultProxy):
        async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                asyncio.get_running_loop().create_task(asyncio.sleep(30))  # started during the shutdown
                raise

    app, _ = flaky_app()
    with BackgroundServer(app) as server:
        proxy = Late(server.port).start()
        with socket.create_connection((proxy.host, proxy.port)):
            time.sleep(0.1)
            with caplog.at_level("ERROR", logger="asyncio"):
                proxy.stop()
                gc.collect()
    assert not [r for r in caplog.records if "pending" in r.getMessage()]
