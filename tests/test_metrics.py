from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pywats_transport import build_async_transport, build_transport
from pywats_transport.layers.metrics import AsyncMetricsLayer, MetricsLayer
from pywats_transport.metrics import MetricsCollector

from .helpers import Caller

ROUTE = "/api/Product/{partNumber}"


def samples(collector: MetricsCollector) -> list[Any]:
    return [s for fam in text_string_to_metric_families(collector.render_prometheus()) for s in fam.samples]


def value(collector: MetricsCollector, name: str, **labels: str) -> float:
    found = [s.value for s in samples(collector) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def server(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/flaky" and "x-tried" not in request.headers:
        request.headers["x-tried"] = "1"
        return httpx.Response(503)
    if request.url.path == "/down":
        raise httpx.ConnectError("refused", request=request)
    return httpx.Response(200, json={"ok": True})


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stack(mode: str, collector: MetricsCollector, **flags: Any) -> Any:
    flags.setdefault("retry", {"backoff_base": 0.001, "max_attempts": 2})
    flags.setdefault("profile", "wats")  # ttl caching: the mock server sends no freshness headers
    build = build_transport if mode == "sync" else build_async_transport
    return build(inner=httpx.MockTransport(server), metrics_collector=collector, **flags)


@pytest.mark.anyio
async def test_known_sequence_gives_exact_series(mode: str) -> None:
    collector = MetricsCollector(isolated=True)
    st = stack(mode, collector, metrics={"enabled": True, "record_body_sizes": True})
    assert st.names[0] == "metrics"
    caller = Caller(mode, st)
    ext = {"route": ROUTE}
    for _ in range(3):
        await caller.get("/api/Product/PN-1?rev=A", extensions=ext)
    await caller.get("/flaky", extensions={"route": "/flaky"})
    with pytest.raises(httpx.ConnectError):
        await caller.get("/down", extensions={"route": "/down"})
    await caller.close()

    d = "http_client_request_duration_seconds_count"
    assert value(collector, d, url_template=ROUTE, http_response_status_code="200", pywats_cache="miss") == 1
    assert value(collector, d, url_template=ROUTE, http_response_status_code="200", pywats_cache="hit") == 2
    assert value(collector, d, url_template="/flaky", http_response_status_code="200") == 1
    assert value(collector, d, url_template="/down", error_type="ConnectError") == 1
    assert value(collector, d, server_address="test", server_port="80", http_request_method="GET") == 5
    assert value(collector, "pywats_transport_cache_lookups_total", result="hit") == 2
    assert value(collector, "pywats_transport_cache_lookups_total", result="miss") == 3
    assert value(collector, "pywats_transport_retries_total", reason="status_503") == 1
    assert value(collector, "pywats_transport_retries_total", reason="connect_error") == 1
    assert value(collector, "http_client_active_requests", http_request_method="GET") == 0
    assert value(collector, "http_client_response_body_size_bytes_count") == 4
    assert value(collector, "process_memory_usage_bytes") > 1_000_000
    assert value(collector, "process_thread_count") >= 1

    summary = json.loads(json.dumps(collector.summary()))
    assert summary["requests"]["total"] == 5
    top = summary["requests"]["by_route"][0]
    assert (top["route"], top["count"], top["cache"]) == (ROUTE, 2, "hit") and top["p50_seconds"] is not None
    assert summary["cache"]["hit_rate"] == pytest.approx(0.4)
    assert summary["retries"]["by_reason"] == {"status_503": 1.0, "connect_error": 1.0}
    assert summary["process"]["memory_bytes"] > 0


@pytest.mark.anyio
async def test_thousand_ids_make_one_template_series(mode: str) -> None:
    collector = MetricsCollector(isolated=True)
    caller = Caller(mode, stack(mode, collector, enable_cache=False, enable_throttling=False))
    for i in range(1000):
        await caller.get(f"/api/Product/PN-{i}?token=abc{i}", extensions={"route": ROUTE},
                         headers={"Authorization": f"Basic secret{i}"})
    await caller.close()
    series = {tuple(sorted(s.labels.items())) for s in samples(collector) if s.name == "http_client_request_duration_seconds_count"}
    assert len(series) == 1
    labels = " ".join(f"{k}={v}" for s in samples(collector) for k, v in s.labels.items())
    assert "PN-" not in labels and "secret" not in labels and "token" not in labels and "?" not in labels


@pytest.mark.anyio
async def test_without_route_no_path_at_all(mode: str) -> None:
    collector = MetricsCollector(isolated=True)
    caller = Caller(mode, stack(mode, collector, enable_cache=False))
    await caller.get("/api/Asset/SN-123")
    await caller.close()
    assert "SN-123" not in collector.render_prometheus() and "url_template" not in collector.render_prometheus()


@pytest.mark.anyio
async def test_throttle_waits_published(mode: str) -> None:
    collector = MetricsCollector(isolated=True)
    caller = Caller(mode, stack(mode, collector, enable_cache=False, throttle={"enabled": True, "rate": 1000, "burst": 1}))
    for _ in range(3):
        await caller.get("/x")
    await caller.close()
    assert value(collector, "pywats_transport_throttle_wait_seconds_count", server_address="test") == 3
    assert value(collector, "pywats_transport_throttle_wait_seconds_sum") > 0


def test_disabled_collector_records_nothing() -> None:
    collector = MetricsCollector(enabled=False)
    layer = MetricsLayer(httpx.MockTransport(server), metrics_collector=collector)
    with httpx.Client(transport=layer) as client:
        assert client.get("http://h/x").status_code == 200
    collector.add_cache_lookup("hit")
    collector.add_retry("x")
    assert collector.render_prometheus() == "" and collector.summary() == {"enabled": False}
    assert layer.stats()["collector_enabled"] is False and layer.stats()["requests"] == 0


@pytest.mark.anyio
async def test_async_layer_counts_active_requests_during_flight() -> None:
    collector = MetricsCollector(isolated=True)
    seen: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(value(collector, "http_client_active_requests"))
        return httpx.Response(200)

    layer = AsyncMetricsLayer(httpx.MockTransport(handler), metrics_collector=collector)
    async with httpx.AsyncClient(transport=layer) as client:
        await client.get("http://h/")
    assert seen == [1.0] and value(collector, "http_client_active_requests") == 0


def test_shared_collectors_do_not_duplicate_series() -> None:
    a, b = MetricsCollector(), MetricsCollector()
    before = value(a, "pywats_transport_cache_lookups_total", result="bypass")
    a.add_cache_lookup("bypass")
    b.add_cache_lookup("bypass")
    assert value(a, "pywats_transport_cache_lookups_total", result="bypass") == before + 2
    names = [f.name for f in text_string_to_metric_families(b.render_prometheus())]
    assert len(names) == len(set(names))


def test_metrics_flag_uses_default_collector() -> None:
    from pywats_transport.metrics import default_collector

    st = build_transport(inner=httpx.MockTransport(server), enable_metrics=True)
    assert st.layer("metrics").collector is default_collector()


def test_every_exported_series_is_in_the_reference() -> None:
    from pywats_transport.metrics.reference import SERIES

    collector = MetricsCollector(isolated=True)
    layer = MetricsLayer(httpx.MockTransport(server), metrics_collector=collector, record_body_sizes=True)
    with httpx.Client(transport=layer) as client:
        client.post("http://h/x", content=b"{}", extensions={"route": "/x"})
        text_before_close = collector.render_prometheus()
    collector.add_cache_lookup("hit")
    collector.add_cache_event("store")
    collector.add_retry("status_503")
    collector.add_retry_exhausted("deadline")
    collector.record_throttle_wait(0.1, "h")
    collector.add_throttle_rejection("h")
    collector.record_queue_processing(0.2, "confirmed")
    collector.observe_gauge("pywats_transport.queue.depth", lambda: {(("state", "pending"),): 1})
    collector.observe_gauge("pywats_transport.circuit.state", lambda: {(("server.address", "h"), ("state", "open")): 1})
    families = {f.name for f in text_string_to_metric_families(collector.render_prometheus() + text_before_close)}
    documented = {s.name.removesuffix("_total") for s in SERIES}
    assert families - documented == set()
    assert {s.name for s in SERIES if s.name.startswith("http_client")} <= {
        f"{n}_total" if n.endswith("_total") else n for n in families} | {"http_client_active_requests"}


def test_body_sizes_are_opt_in() -> None:
    collector = MetricsCollector(isolated=True)
    for record in (False, True):
        layer = MetricsLayer(httpx.MockTransport(server), metrics_collector=collector, record_body_sizes=record)
        with httpx.Client(transport=layer) as client:
            client.post("http://h/x", content=b"12345", extensions={"route": f"/sizes/{record}"})
    assert value(collector, "http_client_request_body_size_bytes_count", url_template="/sizes/False") == 0
    assert value(collector, "http_client_request_body_size_bytes_sum", url_template="/sizes/True") == 5
    assert value(collector, "http_client_request_duration_seconds_count", url_template="/sizes/False") == 1


@pytest.mark.anyio
async def test_active_requests_keep_a_bounded_number_of_label_sets() -> None:
    """Each host and route met kept its in-flight count for the layer's lifetime: a client of ever new
    hosts (or an app that passes raw paths as routes) grew it, and the gauge's series, without bound. The
    label sets not in flight now go past a bound; one in flight meanwhile keeps its count."""
    import asyncio

    collector = MetricsCollector(isolated=True)
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "held":
            await release.wait()
        return httpx.Response(200)

    layer = AsyncMetricsLayer(httpx.MockTransport(handler), metrics_collector=collector)
    async with httpx.AsyncClient(transport=layer) as client:
        held = asyncio.ensure_future(client.get("http://held/"))
        await asyncio.sleep(0.01)
        for i in range(3000):
            await client.get(f"http://station-{i}.example/")
        series = [s for s in samples(collector) if s.name == "http_client_active_requests"]
        assert len(series) <= 1024
        assert value(collector, "http_client_active_requests", server_address="held") == 1
        release.set()
        await held
    assert value(collector, "http_client_active_requests", server_address="held") == 0


@pytest.mark.anyio
async def test_a_stack_nobody_closed_is_not_kept_alive_by_the_collector(mode: str) -> None:
    """The collector, process-wide by default, held each metrics layer's in-flight counter (and each
    circuit's gauge) for good: a stack built and dropped without being closed lived on, with its cache and
    connections, as long as the process, and was read at every scrape."""
    import gc
    import weakref

    collector = MetricsCollector(isolated=True)
    dropped = []
    for i in range(50):
        transport = stack(mode, collector)
        caller = Caller(mode, transport)
        await caller.get(f"/api/Product/PN-{i}")
        dropped.append(weakref.ref(transport))
        del caller, transport  # dropped without close(), as scripts and tests often do
    gc.collect()
    assert sum(ref() is not None for ref in dropped) == 0
    assert len(collector.telemetry.active_sources) == 0
    kept = stack(mode, collector)  # a live one is still read, and a scrape still works
    assert len(collector.telemetry.active_sources) == 1 and "http_client_request_duration" in collector.render_prometheus()
    del kept
