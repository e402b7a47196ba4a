"""The metrics layer: OpenTelemetry HTTP client metrics (stable semantic conventions), recorded outermost.

Labels are bounded by construction: the method is one of the known ones or
``_OTHER``, the path appears only as the caller's route template (request
extension ``"route"``), never raw; query strings and credentials never appear.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx
from opentelemetry.semconv._incubating.attributes.url_attributes import URL_TEMPLATE
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from ..config import MetricsSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncLayer, Layer, layer_settings
from ..metrics import MetricsCollector, default_collector

#: request extension carrying the route template, e.g. "/api/Product/{partNumber}"
ROUTE_EXTENSION = "route"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def excluded_urls(setting: str) -> ExcludeList | None:
    """URLs not recorded: the setting, else the instrumentation's own variables
    (``OTEL_PYTHON_HTTPX_EXCLUDED_URLS``, then ``OTEL_PYTHON_EXCLUDED_URLS``); None when nothing is excluded."""
    value = setting or os.environ.get("OTEL_PYTHON_HTTPX_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    return parse_excluded_urls(value) if value and value.strip() else None


class _LabelSet:
    """One label set: its attributes as a hashable key, the attribute dicts built from it (per status and
    cache outcome, once each), and how many of its requests are in flight."""

    __slots__ = ("key", "attrs", "active")

    def __init__(self, key: tuple[tuple[str, Any], ...]) -> None:
        self.key = key
        self.attrs: dict[tuple[int | None, str | None], dict[str, Any]] = {}
        self.active = 0


#: label sets kept per layer before the unused ones are dropped (they are few by design)
MAX_LABEL_SETS = 1024


class _MetricsCore:
    name = "metrics"
    settings: MetricsSettings

    def _setup(self, settings: MetricsSettings | None, collector: MetricsCollector | None, overrides: dict[str, Any]) -> None:
        settings = layer_settings(MetricsSettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.collector = collector if collector is not None else default_collector()
        self._excluded = excluded_urls(settings.excluded_urls)
        t = self.collector.telemetry
        self._on = t is not None
        self._all = self._on and self._excluded is None  # every request is recorded: nothing to check
        self.requests = 0
        self.errors = 0
        # The request's method, host, port, scheme and route -> its label set: one lookup a request.
        self._label_sets: dict[tuple[Any, ...], _LabelSet] = {}
        self._lock = threading.Lock()
        if t is not None:
            self._duration = t.duration
            self._req_size, self._resp_size = t.request_size, t.response_size
            t.active_sources.add(self._active_counts)
            self._telemetry = t

    def _active_counts(self) -> dict[tuple[tuple[str, Any], ...], int]:
        with self._lock:
            for _ in range(10):
                try:
                    sets = list(self._label_sets.values())
                    break
                except RuntimeError:  # the async layer added a label set while this scrape copied
                    continue
            else:
                return {}
        counts: dict[tuple[tuple[str, Any], ...], int] = {}
        for labels in sets:
            counts[labels.key] = counts.get(labels.key, 0) + labels.active
        return counts

    def _unregister(self) -> None:
        if self._on:
            self._telemetry.active_sources.remove(self._active_counts)

    def _labels(self, request: httpx.Request) -> _LabelSet:
        url = request.url
        route = request.extensions.get(ROUTE_EXTENSION)
        seen = (request.method, url.host, url.port, url.scheme, route)
        labels = self._label_sets.get(seen)
        return labels if labels is not None else self._new_labels(seen)

    def _new_labels(self, seen: tuple[Any, ...]) -> _LabelSet:
        """A label set met for the first time: the method one of the known ones or ``_OTHER``, the port as
        the scheme implies it, the route template only when the caller gave one."""
        method, host, port, scheme, route = seen
        key: tuple[tuple[str, Any], ...] = (
            (HTTP_REQUEST_METHOD, method if method in KNOWN_METHODS else "_OTHER"), (SERVER_ADDRESS, host),
            (SERVER_PORT, port or DEFAULT_PORTS.get(scheme, 0)))
        if route:
            key += ((URL_TEMPLATE, str(route)),)
        with self._lock:
            if len(self._label_sets) >= MAX_LABEL_SETS:  # unbounded routes or hosts: keep what is in flight
                self._label_sets = {k: v for k, v in self._label_sets.items() if v.active}
            labels = self._label_sets.setdefault(seen, _LabelSet(key))
        return labels

    def _skipped(self, request: httpx.Request) -> bool:
        return not self._on or (self._excluded is not None and self._excluded.url_disabled(str(request.url)))

    @staticmethod
    def _attrs(labels: _LabelSet, status: int | None, outcome: str | None) -> dict[str, Any]:
        """The attribute dict for a label set and outcome, built once and reused: the SDK copies the
        attributes it keeps, so sharing them is safe."""
        attrs = labels.attrs.get((status, outcome))
        if attrs is None:
            attrs = dict(labels.key)
            if status is None:
                attrs[ERROR_TYPE] = outcome or "_OTHER"
            else:
                attrs[HTTP_RESPONSE_STATUS_CODE] = status
                if status >= 400:
                    attrs[ERROR_TYPE] = str(status)
                if outcome is not None:
                    attrs["pywats.cache"] = outcome
            labels.attrs[(status, outcome)] = attrs
        return attrs

    def _record(self, request: httpx.Request, labels: _LabelSet, started: float,
                response: httpx.Response | None, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        self.requests += 1
        if response is not None:
            status: int | None = response.status_code
            caching = response.extensions.get("caching")
            outcome = None
            if caching is not None:
                outcome = caching.get("lookup") or ("hit" if caching.get("from_cache") else "miss")
            if response.status_code >= 400:
                self.errors += 1
        else:
            status, outcome = None, type(exc).__qualname__ if exc is not None else None
            self.errors += 1
        attrs = self._attrs(labels, status, outcome)
        self._duration.record(elapsed, attrs)
        if self.settings.record_body_sizes:
            req_len = request.headers.get("content-length") if request.method not in _BODYLESS else None
            if req_len is not None:
                self._req_size.record(int(req_len), attrs)
            if response is not None:
                resp_len = response.headers.get("content-length")
                if resp_len is not None and resp_len.isdigit():
                    self._resp_size.record(int(resp_len), attrs)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "collector_enabled": self._on}


class MetricsLayer(_MetricsCore, Layer):
    """Sync metrics layer: ``MetricsLayer(inner, metrics_collector=collector)``."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: MetricsSettings | None = None,
                 metrics_collector: MetricsCollector | None = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, metrics_collector, overrides)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._all and self._skipped(request):
            return self.inner.handle_request(request)
        labels = self._labels(request)
        lock = self._lock
        with lock:
            labels.active += 1
        started = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            self._record(request, labels, started, None, exc)
            raise
        finally:
            with lock:
                labels.active -= 1
        self._record(request, labels, started, response, None)
        return response

    def close_layer(self) -> None:
        self._unregister()


class AsyncMetricsLayer(_MetricsCore, AsyncLayer):
    """Async metrics layer."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: MetricsSettings | None = None,
                 metrics_collector: MetricsCollector | None = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, metrics_collector, overrides)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._all and self._skipped(request):
            return await self.inner.handle_async_request(request)
        labels = self._labels(request)
        labels.active += 1  # one event loop runs this layer: the count needs no lock
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            self._record(request, labels, started, None, exc)
            raise
        finally:
            labels.active -= 1
        self._record(request, labels, started, response, None)
        return response

    async def aclose_layer(self) -> None:
        self._unregister()


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="metrics",
            position=100,
            config_model=MetricsSettings,
            sync_factory=lambda inner, settings, ctx: MetricsLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector
            ),
            async_factory=lambda inner, settings, ctx: AsyncMetricsLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector
            ),
            description="OpenTelemetry HTTP client metrics (http.client.request.duration, active requests, body sizes)",
        )
    ]
