from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pywats_transport import PluginManager, build_async_transport, build_transport

ROUTE = "/api/Product/{partNumber}"


@pytest.fixture
def exporter() -> tuple[TracerProvider, InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return provider, exp


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(httpx.Headers(request.headers))  # a copy: the next attempt rewrites them
        if len(self.headers) <= self.failures:
            return httpx.Response(503)
        return httpx.Response(200, json={"ok": True})


def test_discovered_and_placed_around_retry() -> None:
    layers = PluginManager().layers()
    assert layers["tracing"].origin.startswith("entry point tracing (pywats-transport-tracing ")
    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)), plugins=["tracing"], metrics=True, throttle=True)
    assert stack.names == ["tracing", "metrics", "cache", "retry", "tracing_attempts", "throttle"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_request_span_with_attempt_children(mode: str, exporter: Any) -> None:
    provider, exp = exporter
    server = Flaky(failures=1)
    flags: dict[str, Any] = dict(inner=httpx.MockTransport(server), plugins=["tracing"], enable_cache=False,
                                 retry={"backoff_base": 0.001}, plugin_context={"tracer_provider": provider})
    if mode == "sync":
        with httpx.Client(transport=build_transport(**flags)) as client:
            assert client.get("http://wats.test/api/Product/PN-1?secret=1", extensions={"route": ROUTE}).status_code == 200
    else:
        async with httpx.AsyncClient(transport=build_async_transport(**flags)) as client:
            r = await client.get("http://wats.test/api/Product/PN-1?secret=1", extensions={"route": ROUTE})
            assert r.status_code == 200
    spans = exp.get_finished_spans()
    request_span = next(s for s in spans if s.kind == SpanKind.INTERNAL)
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert request_span.name == f"GET {ROUTE}" and len(attempts) == 2
    assert all(a.parent is not None and a.parent.span_id == request_span.context.span_id for a in attempts)
    assert attempts[0].attributes["http.response.status_code"] == 503
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert "http.request.resend_count" not in attempts[0].attributes
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert request_span.attributes["url.template"] == ROUTE
    assert request_span.attributes["url.full"] == "http://wats.test/api/Product/PN-1"
    assert request_span.attributes["http.response.status_code"] == 200
    # Each attempt carried its own span's context to the server.
    sent = [h["traceparent"] for h in server.headers]
    assert [p.split("-")[2] for p in sent] == [format(a.context.span_id, "016x") for a in attempts]


@pytest.mark.anyio
async def test_errors_recorded_on_spans(exporter: Any) -> None:
    provider, exp = exporter

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    stack = build_async_transport(inner=httpx.MockTransport(down), plugins=["tracing"], enable_cache=False,
                                  retry={"max_attempts": 2, "backoff_base": 0.001},
                                  plugin_context={"tracer_provider": provider})
    async with httpx.AsyncClient(transport=stack) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://wats.test/x")
    spans = exp.get_finished_spans()
    assert len(spans) == 3 and all(s.attributes["error.type"] == "ConnectError" for s in spans)
    assert next(s for s in spans if s.kind == SpanKind.INTERNAL).name == "GET"


def test_attempt_spans_can_be_switched_off(exporter: Any) -> None:
    provider, exp = exporter
    stack = build_transport(inner=httpx.MockTransport(lambda r: httpx.Response(200)), plugins=["tracing"],
                            plugin_settings={"tracing": {"attempt_spans": False}}, plugin_context={"tracer_provider": provider})
    with httpx.Client(transport=stack) as client:
        client.get("http://wats.test/x")
    assert [s.kind for s in exp.get_finished_spans()] == [SpanKind.INTERNAL]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_wats_clients_pass_their_plugin_context_to_the_layers(mode: str, exporter: Any) -> None:
    """A WATS client could not be given the application's TracerProvider (its spans went to the global one):
    it takes ``plugin_context`` as the builders do."""
    from pywats_transport import WATS, AsyncWATS

    provider, exp = exporter
    version = httpx.MockTransport(lambda request: httpx.Response(200, json={"version": "24.1"}))
    kwargs: dict[str, Any] = dict(transport=version, plugins=["tracing"], plugin_context={"tracer_provider": provider})
    if mode == "sync":
        with WATS("http://wats.test", "token-1", **kwargs) as api:
            assert api.app.version().version == "24.1"
    else:
        async with AsyncWATS("http://wats.test", "token-1", **kwargs) as aapi:
            assert (await aapi.app.version()).version == "24.1"
    names = sorted(s.name for s in exp.get_finished_spans())
    assert names == ["GET /api/App/Version"] * 2  # the request span and its attempt, in this provider
