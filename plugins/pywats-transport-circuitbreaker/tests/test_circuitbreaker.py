from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pywats_transport_circuitbreaker import (
    AsyncCircuitBreakerLayer,
    BreakerSettings,
    CircuitBreakerLayer,
    CircuitOpenError,
)

from pywats_transport import PluginManager, build_async_transport, build_transport
from pywats_transport.metrics import MetricsCollector


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


class Server:
    def __init__(self) -> None:
        self.status = 503
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(self.status)


class Caller:
    def __init__(self, mode: str, layer: Any) -> None:
        self.mode, self.layer = mode, layer

    async def get(self) -> httpx.Response:
        request = httpx.Request("GET", "http://wats.test/api/x")
        if self.mode == "sync":
            return self.layer.handle_request(request)  # type: ignore[no-any-return]
        return await self.layer.handle_async_request(request)  # type: ignore[no-any-return]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(mode: str, **settings: Any) -> tuple[Caller, Server, Clock, Any]:
    server, clock = Server(), Clock()
    cls = CircuitBreakerLayer if mode == "sync" else AsyncCircuitBreakerLayer
    layer = cls(httpx.MockTransport(server), clock=clock, **settings)
    return Caller(mode, layer), server, clock, layer


def test_discovered_through_its_entry_point_at_its_position() -> None:
    layers = PluginManager().layers()
    assert layers["circuitbreaker"].origin.startswith("entry point circuitbreaker (pywats-transport-circuitbreaker ")
    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)), plugins=["circuitbreaker"], throttle=True,
                            plugin_settings={"circuitbreaker": {"failure_threshold": 2}})
    assert stack.names == ["cache", "retry", "circuitbreaker", "throttle"]
    assert stack.layer("circuitbreaker").settings.failure_threshold == 2


@pytest.mark.anyio
async def test_opens_after_consecutive_failures_and_fails_fast(mode: str) -> None:
    caller, server, clock, layer = make(mode, failure_threshold=3)
    for _ in range(3):
        assert (await caller.get()).status_code == 503
    with pytest.raises(CircuitOpenError, match=r"circuit for wats.test is open after 3 failure\(s\); next probe in 30.0s"):
        await caller.get()
    assert server.calls == 3
    assert layer.stats()["hosts"]["wats.test"]["state"] == "open"


@pytest.mark.anyio
async def test_half_open_probe_closes_or_reopens(mode: str) -> None:
    caller, server, clock, layer = make(mode, failure_threshold=1, cooldown=5)
    await caller.get()
    clock.t += 5
    assert layer.breaker.state("wats.test") == "half_open"
    await caller.get()  # the probe fails: open again for a full cool-down
    with pytest.raises(CircuitOpenError):
        await caller.get()
    clock.t += 5
    server.status = 200
    assert (await caller.get()).status_code == 200
    assert layer.stats()["hosts"]["wats.test"]["state"] == "closed"
    assert (await caller.get()).status_code == 200 and server.calls == 4


@pytest.mark.anyio
async def test_failure_ratio_over_window(mode: str) -> None:
    caller, server, clock, layer = make(mode, failure_threshold=100, failure_ratio=0.5, min_requests=4)
    for status in (200, 503, 200, 503):
        server.status = status
        await caller.get()
    with pytest.raises(CircuitOpenError):
        await caller.get()


@pytest.mark.anyio
async def test_exceptions_count_and_other_hosts_unaffected(mode: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.test":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    cls = CircuitBreakerLayer if mode == "sync" else AsyncCircuitBreakerLayer
    layer = cls(httpx.MockTransport(handler), failure_threshold=2)
    client: Any = httpx.Client(transport=layer) if mode == "sync" else httpx.AsyncClient(transport=layer)

    async def get(url: str) -> httpx.Response:
        return client.get(url) if mode == "sync" else await client.get(url)

    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            await get("http://down.test/")
    with pytest.raises(CircuitOpenError):
        await get("http://down.test/")
    assert (await get("http://up.test/")).status_code == 200


@pytest.mark.anyio
async def test_retry_does_not_retry_an_open_circuit_and_state_is_a_metric() -> None:
    collector = MetricsCollector(isolated=True)
    server = Server()
    stack = build_async_transport(inner=httpx.MockTransport(server), plugins=["circuitbreaker"], enable_cache=False,
                                  plugin_settings={"circuitbreaker": {"failure_threshold": 2}},
                                  retry={"backoff_base": 0.001, "max_attempts": 5}, metrics_collector=collector)
    async with httpx.AsyncClient(transport=stack) as client:
        with pytest.raises(CircuitOpenError):
            await client.get("http://wats.test/x")
        text = collector.render_prometheus()
    assert server.calls == 2  # two real attempts, then the breaker refused the third
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "pywats_transport_circuit_state"]
    assert {s.labels["state"]: s.value for s in samples} == {"closed": 0.0, "half_open": 0.0, "open": 1.0}


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerSettings(failure_threshold=0)


@pytest.mark.anyio
async def test_a_cancelled_half_open_probe_lets_the_next_request_probe() -> None:
    """The half-open probe was let through and then cancelled (a caller's timeout, a task group's
    cancellation): the breaker still took it for in flight, and refused every later request to the
    host for good, whatever the host did meanwhile."""
    import anyio

    clock, server = Clock(), Server()
    hang = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hang":
            await hang.wait()
        return httpx.Response(server.status)

    layer = AsyncCircuitBreakerLayer(httpx.MockTransport(handler), clock=clock, failure_threshold=1, cooldown=5)
    assert (await layer.handle_async_request(httpx.Request("GET", "http://wats.test/x"))).status_code == 503
    clock.t += 5
    server.status = 200
    with anyio.move_on_after(0.05):
        await layer.handle_async_request(httpx.Request("GET", "http://wats.test/hang"))  # the probe, cancelled
    response = await layer.handle_async_request(httpx.Request("GET", "http://wats.test/x"))  # probes again
    assert response.status_code == 200 and layer.breaker.state("wats.test") == "closed"


@pytest.mark.anyio
async def test_a_request_the_throttle_below_refused_is_not_the_hosts_failure(mode: str) -> None:
    """A ``ThrottledError`` (the throttle layer's own limit: nothing was sent) counted as the host failing,
    so a busy client opened the circuit of a healthy host."""
    server = Server()
    server.status = 200
    builder = build_transport if mode == "sync" else build_async_transport
    stack: Any = builder(inner=httpx.MockTransport(server), plugins=["circuitbreaker"], enable_cache=False,
                         enable_retry=False, throttle={"enabled": True, "rate": 1, "burst": 1, "max_wait": 0},
                         plugin_settings={"circuitbreaker": {"failure_threshold": 2}})
    client: Any = httpx.Client(transport=stack) if mode == "sync" else httpx.AsyncClient(transport=stack)

    async def get() -> httpx.Response:
        return client.get("http://wats.test/x") if mode == "sync" else await client.get("http://wats.test/x")

    from pywats_transport import ThrottledError

    assert (await get()).status_code == 200
    for _ in range(3):
        with pytest.raises(ThrottledError):
            await get()
    assert stack.layer("circuitbreaker").breaker.state("wats.test") == "closed"
    assert server.calls == 1


def test_a_client_of_ever_new_hosts_keeps_a_bounded_number_of_circuits() -> None:
    """One circuit per host met was kept for the layer's life, in stats and as gauge series."""
    from pywats_transport_circuitbreaker import Breaker

    clock = Clock()
    breaker = Breaker(BreakerSettings(failure_threshold=1, window=30), clock)
    breaker.after("down.test", True)  # open: kept, whatever comes after
    for i in range(5000):
        breaker.after(f"h{i}.test", False)
        clock.t += 0.1
    hosts = breaker.snapshot()
    assert len(hosts) <= 1024 + 1
    assert hosts["down.test"]["state"] in ("open", "half_open") and "h4999.test" in hosts


@pytest.mark.anyio
async def test_an_open_circuit_is_an_httpx_error_to_the_app_and_a_connection_error_to_wats(mode: str) -> None:
    """An app's ``except httpx.HTTPError`` (and the WATS clients' own handling) let an open circuit through:
    it was a RuntimeError, so a drop-in stack crashed code that handled every failure of httpx's own."""
    from pywats_transport import WATS, AsyncWATS
    from pywats_transport.wats import ServerError, WATSConnectionError

    server = Server()
    settings = {"plugin_settings": {"circuitbreaker": {"failure_threshold": 1}}, "retry": False, "cache": False}
    if mode == "sync":
        with httpx.Client(transport=build_transport(settings, inner=httpx.MockTransport(server),
                                                    plugins=["circuitbreaker"])) as client:
            assert client.get("http://wats.test/a").status_code == 503
            with pytest.raises(httpx.HTTPError) as info:
                client.get("http://wats.test/a")
        with WATS("http://wats.test", "token-1", transport=httpx.MockTransport(server), plugins=["circuitbreaker"],
                  config=settings) as api:
            with pytest.raises(ServerError):
                api.app.version()  # the 503 opens it
            with pytest.raises(WATSConnectionError, match=r"GET /api/App/Version failed: CircuitOpenError: circuit "
                                                          r"for wats.test is open after 1 failure"):
                api.app.version()
    else:
        async with httpx.AsyncClient(transport=build_async_transport(
                settings, inner=httpx.MockTransport(server), plugins=["circuitbreaker"])) as aclient:
            assert (await aclient.get("http://wats.test/a")).status_code == 503
            with pytest.raises(httpx.HTTPError) as info:
                await aclient.get("http://wats.test/a")
        async with AsyncWATS("http://wats.test", "token-1", transport=httpx.MockTransport(server),
                             plugins=["circuitbreaker"], config=settings) as aapi:
            with pytest.raises(ServerError):
                await aapi.app.version()
            with pytest.raises(WATSConnectionError, match=r"failed: CircuitOpenError: circuit for wats.test is open"):
                await aapi.app.version()
    assert isinstance(info.value, CircuitOpenError) and info.value.request.url == "http://wats.test/a"
    assert server.calls == 2  # one each: neither open circuit sent anything
