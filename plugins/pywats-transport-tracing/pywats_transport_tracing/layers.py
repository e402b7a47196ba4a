"""Request spans (outermost) and attempt spans (inside retry), sync and async."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import Field

from pywats_transport import AsyncLayer, Layer, PluginSettings, layer_settings

SCOPE = "pywats_transport_tracing"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Attempts seen so far for the logical request whose span is current (None outside a request span).
_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("pywats_attempts", default=None)


class TracingSettings(PluginSettings):

    attempt_spans: bool = Field(True, description="A CLIENT span per attempt, inside retry.")
    propagate: bool = Field(True, description="Inject the W3C trace context into outgoing requests.")


def span_name(request: httpx.Request) -> str:
    route = request.extensions.get("route")
    return f"{request.method} {route}" if route else request.method


def _attributes(request: httpx.Request) -> dict[str, Any]:
    url = request.url
    attrs: dict[str, Any] = {
        "http.request.method": request.method,
        "server.address": url.host,
        "server.port": url.port or DEFAULT_PORTS.get(url.scheme, 0),
        # No query string, no userinfo: they may carry secrets.
        "url.full": str(url.copy_with(query=None, fragment=None, username=None, password=None)),
    }
    route = request.extensions.get("route")
    if route:
        attrs["url.template"] = str(route)
    return attrs


def _finish(span: trace.Span, response: httpx.Response | None, exc: BaseException | None) -> None:
    if response is not None:
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
    elif exc is not None:
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class _Core:
    settings: TracingSettings

    def _setup(self, settings: TracingSettings | None, tracer_provider: Any, overrides: dict[str, Any]) -> None:
        self.settings = layer_settings(TracingSettings, settings, overrides, f"{type(self).__name__} settings")
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(SCOPE)
        self.spans = 0

    @contextmanager
    def _request_span(self, request: httpx.Request) -> Iterator[trace.Span]:
        token = _attempts.set([0])
        try:
            with self.tracer.start_as_current_span(span_name(request), kind=SpanKind.INTERNAL,
                                                   attributes=_attributes(request), record_exception=False,
                                                   set_status_on_exception=False) as span:
                self.spans += 1
                yield span
        finally:
            _attempts.reset(token)

    @contextmanager
    def _attempt_span(self, request: httpx.Request) -> Iterator[trace.Span]:
        counter = _attempts.get()
        resend = 0
        if counter is not None:
            resend = counter[0]
            counter[0] += 1
        attrs = _attributes(request)
        if resend:
            attrs["http.request.resend_count"] = resend
        with self.tracer.start_as_current_span(span_name(request), kind=SpanKind.CLIENT, attributes=attrs,
                                               record_exception=False, set_status_on_exception=False) as span:
            self.spans += 1
            if self.settings.propagate:
                propagate.inject(request.headers)
            yield span

    def stats(self) -> dict[str, Any]:
        return {"spans": self.spans}


class _SpanLayer(_Core, Layer):
    """Runs each request inside the span :meth:`_span` opens; the two tracing layers differ only there."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: TracingSettings | None = None,
                 tracer_provider: Any = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, tracer_provider, overrides)

    def _active(self) -> bool:
        return True

    def _span(self, request: httpx.Request) -> Any:
        raise NotImplementedError

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._active():
            return self.inner.handle_request(request)
        with self._span(request) as span:
            try:
                response = self.inner.handle_request(request)
            except BaseException as exc:
                _finish(span, None, exc)
                raise
            _finish(span, response, None)
            return response


class _AsyncSpanLayer(_Core, AsyncLayer):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: TracingSettings | None = None,
                 tracer_provider: Any = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, tracer_provider, overrides)

    def _active(self) -> bool:
        return True

    def _span(self, request: httpx.Request) -> Any:
        raise NotImplementedError

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._active():
            return await self.inner.handle_async_request(request)
        with self._span(request) as span:
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                _finish(span, None, exc)
                raise
            _finish(span, response, None)
            return response


class RequestSpanLayer(_SpanLayer):
    """One span per logical request (outermost)."""

    name = "tracing"
    _span = _Core._request_span


class AsyncRequestSpanLayer(_AsyncSpanLayer):
    name = "tracing"
    _span = _Core._request_span


class AttemptSpanLayer(_SpanLayer):
    """One CLIENT span per attempt (inside retry)."""

    name = "tracing_attempts"
    _span = _Core._attempt_span

    def _active(self) -> bool:
        return self.settings.attempt_spans


class AsyncAttemptSpanLayer(_AsyncSpanLayer):
    name = "tracing_attempts"
    _span = _Core._attempt_span

    def _active(self) -> bool:
        return self.settings.attempt_spans
