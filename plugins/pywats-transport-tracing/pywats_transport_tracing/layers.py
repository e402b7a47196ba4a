"""Request spans (outermost) and attempt spans (inside retry), sync and async.

Alongside ``opentelemetry-instrumentation-httpx`` the instrumentation owns the CLIENT spans and the
``traceparent`` header: when it is on (``instrument()``), or when a request arrives already carrying
a trace context (``instrument_client()`` wraps the whole stack), the attempt layer makes no span and
injects nothing, so no CLIENT span nests in another and the context is injected once. The request
span (INTERNAL, with ``pywats.cache``) stays: cache hits, which reach no network, remain visible.
"""

from __future__ import annotations

import contextvars
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import parse_excluded_urls
from pydantic import Field

from pywats_transport import AsyncLayer, Layer, PluginSettings, layer_settings

SCOPE = "pywats_transport_tracing"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Attempts seen so far for the logical request whose span is current (None outside a request span).
_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("pywats_attempts", default=None)
# The request arrived with a trace context someone outside the stack injected (instrument_client()).
_outside: contextvars.ContextVar[bool] = contextvars.ContextVar("pywats_outside_trace", default=False)


class RequestInfo(NamedTuple):
    """What a hook sees of the request: the fields of opentelemetry-instrumentation-httpx's ``RequestInfo``."""

    method: bytes
    url: httpx.URL
    headers: httpx.Headers
    stream: Any
    extensions: dict[str, Any]


class ResponseInfo(NamedTuple):
    """What a hook sees of the response: the fields of opentelemetry-instrumentation-httpx's ``ResponseInfo``."""

    status_code: int
    headers: httpx.Headers
    stream: Any
    extensions: dict[str, Any]


def _request_info(request: httpx.Request) -> RequestInfo:
    return RequestInfo(request.method.encode(), request.url, request.headers, request.stream, request.extensions)


def _response_info(response: httpx.Response) -> ResponseInfo:
    return ResponseInfo(response.status_code, response.headers, response.stream, response.extensions)


def instrumentation_active() -> bool:
    """``HTTPXClientInstrumentor().instrument()`` is on: it makes the CLIENT spans of every attempt."""
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        return False
    return bool(HTTPXClientInstrumentor().is_instrumented_by_opentelemetry)


class TracingSettings(PluginSettings):

    attempt_spans: bool = Field(True, description="A CLIENT span per attempt, inside retry (unless the httpx "
                                "instrumentation makes them).")
    propagate: bool = Field(True, description="Inject the W3C trace context into outgoing requests.")
    excluded_urls: str = Field("", description="Comma-separated regular expressions of URLs not traced (as "
                               "OTEL_PYTHON_HTTPX_EXCLUDED_URLS, which applies when this is empty).")


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
        caching = response.extensions.get("caching")
        if caching:  # a hit reaches no network: this attribute is how it shows in a trace
            span.set_attribute("pywats.cache", caching.get("lookup") or ("hit" if caching.get("from_cache") else "miss"))
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
    elif exc is not None:
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class _Core:
    settings: TracingSettings

    def _setup(self, settings: TracingSettings | None, tracer_provider: Any, overrides: dict[str, Any],
               hooks: dict[str, Any] | None = None) -> None:
        self.settings = layer_settings(TracingSettings, settings, overrides, f"{type(self).__name__} settings")
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(SCOPE)
        self.spans = 0
        hooks = hooks or {}
        self.request_hook, self.response_hook = hooks.get("request_hook"), hooks.get("response_hook")
        self.async_request_hook = hooks.get("async_request_hook")
        self.async_response_hook = hooks.get("async_response_hook")
        value = self.settings.excluded_urls or os.environ.get("OTEL_PYTHON_HTTPX_EXCLUDED_URLS") or \
            os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        self._excluded = parse_excluded_urls(value) if value and value.strip() else None

    def _traced(self, request: httpx.Request) -> bool:
        return self._excluded is None or not self._excluded.url_disabled(str(request.url))

    @contextmanager
    def _request_span(self, request: httpx.Request) -> Iterator[trace.Span]:
        token = _attempts.set([0])
        outside = _outside.set("traceparent" in request.headers)
        try:
            with self.tracer.start_as_current_span(span_name(request), kind=SpanKind.INTERNAL,
                                                   attributes=_attributes(request), record_exception=False,
                                                   set_status_on_exception=False) as span:
                self.spans += 1
                yield span
        finally:
            _outside.reset(outside)
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

    def _attempts_traced(self, request: httpx.Request) -> bool:
        # The httpx instrumentation, inside (instrument()) or outside (instrument_client()), owns CLIENT spans.
        return self.settings.attempt_spans and not _outside.get() and not instrumentation_active()


class _SpanLayer(_Core, Layer):
    """Runs each request inside the span :meth:`_span` opens; the two tracing layers differ only there."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: TracingSettings | None = None,
                 tracer_provider: Any = None, hooks: dict[str, Any] | None = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, tracer_provider, overrides, hooks)

    def _active(self, request: httpx.Request) -> bool:
        return self._traced(request)

    def _hooked(self) -> bool:
        return False

    def _span(self, request: httpx.Request) -> Any:
        raise NotImplementedError

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._active(request):
            return self.inner.handle_request(request)
        with self._span(request) as span:
            hooked = self._hooked()
            if hooked and self.request_hook is not None:
                self.request_hook(span, _request_info(request))
            try:
                response = self.inner.handle_request(request)
            except BaseException as exc:
                _finish(span, None, exc)
                raise
            _finish(span, response, None)
            if hooked and self.response_hook is not None:
                self.response_hook(span, _request_info(request), _response_info(response))
            return response


class _AsyncSpanLayer(_Core, AsyncLayer):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: TracingSettings | None = None,
                 tracer_provider: Any = None, hooks: dict[str, Any] | None = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, tracer_provider, overrides, hooks)

    def _active(self, request: httpx.Request) -> bool:
        return self._traced(request)

    def _hooked(self) -> bool:
        return False

    def _span(self, request: httpx.Request) -> Any:
        raise NotImplementedError

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._active(request):
            return await self.inner.handle_async_request(request)
        with self._span(request) as span:
            hooked = self._hooked()
            if hooked:
                await _call(self.async_request_hook or self.request_hook, span, _request_info(request))
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                _finish(span, None, exc)
                raise
            _finish(span, response, None)
            if hooked:
                await _call(self.async_response_hook or self.response_hook, span, _request_info(request),
                            _response_info(response))
            return response


class RequestSpanLayer(_SpanLayer):
    """One span per logical request (outermost); the hooks see its request and response."""

    name = "tracing"
    _span = _Core._request_span

    def _hooked(self) -> bool:
        return True


class AsyncRequestSpanLayer(_AsyncSpanLayer):
    name = "tracing"
    _span = _Core._request_span

    def _hooked(self) -> bool:
        return True


class AttemptSpanLayer(_SpanLayer):
    """One CLIENT span per attempt (inside retry), unless the httpx instrumentation makes them."""

    name = "tracing_attempts"
    _span = _Core._attempt_span

    def _active(self, request: httpx.Request) -> bool:
        return self._traced(request) and self._attempts_traced(request)


class AsyncAttemptSpanLayer(_AsyncSpanLayer):
    name = "tracing_attempts"
    _span = _Core._attempt_span

    def _active(self, request: httpx.Request) -> bool:
        return self._traced(request) and self._attempts_traced(request)


async def _call(hook: Any, *args: Any) -> None:
    if hook is None:
        return
    result = hook(*args)
    if inspect.isawaitable(result):
        await result
