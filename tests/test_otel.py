"""OpenTelemetry-native: metrics into the app's providers, traces beside opentelemetry-instrumentation-httpx."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes.url_attributes import URL_TEMPLATE
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.metrics.http_metrics import HTTP_CLIENT_REQUEST_DURATION
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pywats_transport import build_async_transport, build_transport
from pywats_transport._server import BackgroundServer
from pywats_transport.metrics import MetricsCollector

from .helpers import Caller

ROUTE = "/api/Product/{partNumber}"
SEMCONV = {HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, SERVER_ADDRESS, SERVER_PORT, URL_TEMPLATE, ERROR_TYPE,
           "pywats.cache"}


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def durations(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == HTTP_CLIENT_REQUEST_DURATION:
                    points += list(metric.data.data_points)
    return points


def build(mode: str, **flags: Any) -> Any:
    return (build_transport if mode == "sync" else build_async_transport)(**flags)


@pytest.mark.anyio
async def test_metrics_go_into_the_apps_meter_provider(mode: str) -> None:
    reader = InMemoryMetricReader()
    collector = MetricsCollector(meter_provider=MeterProvider(metric_readers=[reader]))
    stack = build(mode, inner=httpx.MockTransport(lambda r: httpx.Response(200)), metrics_collector=collector,
                  enable_cache=False, metrics={"enabled": True, "excluded_urls": "/health"})
    caller = Caller(mode, stack)
    await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})
    await caller.get("/health")  # excluded: recorded nowhere
    await caller.close()
    points = durations(reader)
    assert len(points) == 1 and points[0].count == 1
    attrs = dict(points[0].attributes)
    assert attrs[URL_TEMPLATE] == ROUTE and attrs[HTTP_REQUEST_METHOD] == "GET" and set(attrs) <= SEMCONV
    assert collector.provider == "app" and "application's MeterProvider" in collector.render_prometheus()
    assert collector.summary()["provider"] == "app"


def test_excluded_urls_from_the_instrumentations_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_HTTPX_EXCLUDED_URLS", "internal/.*")
    reader = InMemoryMetricReader()
    collector = MetricsCollector(meter_provider=MeterProvider(metric_readers=[reader]))
    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)), metrics_collector=collector)
    with httpx.Client(transport=stack, base_url="http://t") as client:
        client.get("/internal/ping")
        client.get("/api/App/Version")
    assert sum(p.count for p in durations(reader)) == 1


GLOBAL = textwrap.dedent("""
    import httpx
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from pywats_transport import build_transport

    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)))  # before the app sets it
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    with httpx.Client(transport=stack, base_url="http://t") as client:
        client.get("/api/Product/PN-1", extensions={"route": "/api/Product/{partNumber}"})
    names = [m.name for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics for m in s.metrics]
    print(sorted(set(names)))
""")


def test_the_global_provider_from_config_and_environment() -> None:
    env = {"PYWATS_TRANSPORT_METRICS__ENABLED": "true", "PYWATS_TRANSPORT_METRICS__PROVIDER": "global",
           "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", GLOBAL], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert HTTP_CLIENT_REQUEST_DURATION in run.stdout and "pywats_transport.cache.lookups" in run.stdout


# -- traces -------------------------------------------------------------------------------------------

@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def traceparent_app() -> Starlette:
    seen: list[str | None] = []

    async def product(request: Request) -> JSONResponse:
        seen.append(request.headers.get("traceparent"))
        status = 503 if len(seen) == 1 else 200  # the first attempt fails: two attempts
        return JSONResponse({"n": len(seen)}, status_code=status)

    app = Starlette(routes=[Route("/api/Product/{pn}", product)])
    app.state.seen = seen
    return app


@pytest.fixture
def server() -> Iterator[Any]:
    app = traceparent_app()
    with BackgroundServer(app) as srv:
        srv.seen = app.state.seen  # type: ignore[attr-defined]
        yield srv


def span_id(traceparent: str | None) -> int:
    assert traceparent is not None
    return int(traceparent.split("-")[2], 16)


def by_kind(spans: Any, kind: SpanKind) -> list[Any]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time)


def flags(provider: Any, **more: Any) -> dict[str, Any]:
    return dict(plugins=["tracing"], enable_cache=False, retry={"backoff_base": 0.001},
                plugin_context={"tracer_provider": provider, **more.pop("context", {})}, **more)


@pytest.mark.anyio
async def test_plugin_alone_internal_request_span_over_client_attempts(mode: str, tracing: Any, server: Any) -> None:
    provider, exporter = tracing
    caller = Caller(mode, build(mode, **flags(provider)), base_url=server.url)
    assert (await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})).status_code == 200
    await caller.close()
    spans = exporter.get_finished_spans()
    (root,), attempts = by_kind(spans, SpanKind.INTERNAL), by_kind(spans, SpanKind.CLIENT)
    assert len(attempts) == 2 and all(a.parent.span_id == root.context.span_id for a in attempts)
    assert [span_id(t) for t in server.seen] == [a.context.span_id for a in attempts]  # injected once per attempt


@pytest.mark.anyio
async def test_with_instrument_the_instrumentation_owns_the_client_spans(mode: str, tracing: Any, server: Any) -> None:
    provider, exporter = tracing
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    try:
        caller = Caller(mode, build(mode, **flags(provider)), base_url=server.url)
        assert (await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})).status_code == 200
        await caller.close()
    finally:
        HTTPXClientInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()
    (root,), clients = by_kind(spans, SpanKind.INTERNAL), by_kind(spans, SpanKind.CLIENT)
    assert len(clients) == 2 and {c.instrumentation_scope.name for c in clients} == {"opentelemetry.instrumentation.httpx"}
    assert all(c.parent.span_id == root.context.span_id for c in clients)  # no CLIENT inside a CLIENT
    assert [span_id(t) for t in server.seen] == [c.context.span_id for c in clients]


@pytest.mark.anyio
async def test_with_instrument_client_ours_nests_inside_its_client_span(mode: str, tracing: Any, server: Any) -> None:
    provider, exporter = tracing
    caller = Caller(mode, build(mode, **flags(provider)), base_url=server.url)
    HTTPXClientInstrumentor.instrument_client(caller.client, tracer_provider=provider)
    assert (await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})).status_code == 200
    await caller.close()
    spans = exporter.get_finished_spans()
    (client_span,), (ours,) = by_kind(spans, SpanKind.CLIENT), by_kind(spans, SpanKind.INTERNAL)
    assert ours.parent.span_id == client_span.context.span_id
    assert {span_id(t) for t in server.seen} == {client_span.context.span_id}  # one context, injected once


@pytest.mark.anyio
async def test_cache_hits_stay_visible_and_hooks_see_request_and_response(mode: str, tracing: Any) -> None:
    provider, exporter = tracing
    seen: list[tuple[str, Any]] = []

    def request_hook(span: Any, request: Any) -> None:
        seen.append(("request", request.method))

    async def async_response_hook(span: Any, request: Any, response: Any) -> None:
        seen.append(("response", response.status_code))

    def response_hook(span: Any, request: Any, response: Any) -> None:
        seen.append(("response", response.status_code))

    hooks = {"request_hook": request_hook,
             ("async_response_hook" if mode == "async" else "response_hook"):
                 async_response_hook if mode == "async" else response_hook}
    stack = build(mode, inner=httpx.MockTransport(lambda r: httpx.Response(200, headers={"cache-control": "max-age=60"})),
                  plugins=["tracing"], plugin_context={"tracer_provider": provider, **hooks})
    caller = Caller(mode, stack)
    await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})
    await caller.get("/api/Product/PN-1", extensions={"route": ROUTE})
    await caller.close()
    roots = by_kind(exporter.get_finished_spans(), SpanKind.INTERNAL)
    assert [r.attributes["pywats.cache"] for r in roots] == ["miss", "hit"]
    assert len(by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)) == 1  # the hit reached no network
    assert seen == [("request", b"GET"), ("response", 200)] * 2


def test_excluded_urls_make_no_spans(tracing: Any) -> None:
    provider, exporter = tracing
    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)), plugins=["tracing"],
                            plugin_settings={"tracing": {"excluded_urls": "health"}},
                            plugin_context={"tracer_provider": provider})
    with httpx.Client(transport=stack, base_url="http://t") as client:
        client.get("/health/live")
        client.get("/api/App/Version")
    assert len(exporter.get_finished_spans()) == 2  # the request span and the attempt of the second only
