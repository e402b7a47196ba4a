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
