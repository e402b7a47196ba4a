"""A stack: an ordered list of layers (outermost first) plus the innermost transport."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import httpx

from .layer import CLOSED_MESSAGE, AsyncLayer, Layer, LayerBase

L = TypeVar("L", Layer, AsyncLayer)
#: layers skipped by the requests of the current task or thread (``stack.bypass(...)``)
_BYPASSED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("pywats_bypassed", default=frozenset())


class _Gate(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Stands in front of one layer: passes to it, or past it while it is switched off."""

    __slots__ = ("layer", "off")

    def __init__(self, layer: Any, off: set[str]) -> None:
        self.layer, self.off = layer, off

    def _target(self) -> Any:
        layer = self.layer
        bypassed = _BYPASSED.get()
        if (self.off or bypassed) and (layer.name in self.off or layer.name in bypassed):
            return layer.inner  # the next gate, or the innermost transport
        return layer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._target().handle_request(request)  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._target().handle_async_request(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.layer.close()

    async def aclose(self) -> None:
        await self.layer.aclose()
_SECTIONS = ("metrics", "cache", "retry", "throttle")


class _StackBase(Generic[L]):
    layers: list[L]
    #: the resolved TransportConfig when the stack was built from config
    config: Any = None

    def _chain(self, layers: Sequence[L], inner: Any) -> Any:
        names = [layer.name for layer in layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"a stack holds each layer once; repeated: {', '.join(dupes)}")
        self._off: set[str] = set()
        raw, nxt = inner, inner
        for layer in reversed(layers):
            if layer._inner is raw:
                layer._inner = None  # built around the next layer: it now goes through that layer's gate
            layer.bind(nxt)
            raw, nxt = layer, _Gate(layer, self._off)
        return nxt

    def _check_names(self, names: tuple[str, ...]) -> None:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(f"no layer named {', '.join(map(repr, unknown))} in this stack; layers: {', '.join(self.names)}")

    @contextlib.contextmanager
    def disabled(self, *names: str) -> Iterator[None]:
        """Switch layers off for every request through this stack while the block runs (tests, maintenance)."""
        self._check_names(names)
        added = [n for n in names if n not in self._off]
        self._off.update(added)
        try:
            yield
        finally:
            self._off.difference_update(added)

    @contextlib.contextmanager
    def bypass(self, *names: str) -> Iterator[None]:
        """Skip layers for the requests this task or thread makes while the block runs; others are unaffected.

        Works as ``with`` in sync and async code alike (the skip follows the context, as contextvars do).
        """
        self._check_names(names)
        token = _BYPASSED.set(_BYPASSED.get() | frozenset(names))
        try:
            yield
        finally:
            _BYPASSED.reset(token)

    def describe(self) -> list[dict[str, Any]]:
        """The layers outermost first, each with its name and effective settings, then the inner transport."""
        chain = [layer.describe() for layer in self.layers]
        for layer, item in zip(self.layers, chain, strict=True):
            if layer.position is not None:
                item["position"] = layer.position
        config = self.config
        for item in chain:
            prefix = f"{item['name']}." if item["name"] in _SECTIONS else f"plugin_settings.{item['name']}."
            item["sources"] = {k: config.source_of(prefix + k) if config is not None else "default"
                               for k in item["settings"]}
        inner = self.inner  # type: ignore[attr-defined]
        chain.append({"name": "transport", "class": f"{type(inner).__module__}.{type(inner).__qualname__}", "settings": {}})
        return chain

    def stats(self) -> dict[str, dict[str, Any]]:
        return {layer.name: layer.stats() for layer in self.layers}

    def layer(self, name: str) -> L:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in this stack; layers: {', '.join(self.names) or '(none)'}")

    def get_layer(self, name: str) -> L | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    # Cache controls, reachable from the stack so that clients need not know the layer.
    def clear_cache(self) -> int:
        cache = self.get_layer("cache")
        return cache.clear() if cache is not None else 0  # type: ignore[attr-defined, no-any-return]

    def invalidate_cache(self, prefix: str) -> int:
        cache = self.get_layer("cache")
        return cache.invalidate(prefix) if cache is not None else 0  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        inner = type(self.inner).__name__  # type: ignore[attr-defined]
        return f"<{type(self).__name__} {' -> '.join([*self.names, inner])}>"


class TransportStack(_StackBase[Layer], httpx.BaseTransport):
    """A synchronous stack, usable as ``httpx.Client(transport=stack)``."""

    def __init__(self, layers: Sequence[Layer] = (), inner: httpx.BaseTransport | None = None) -> None:
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"a sync stack takes sync layers; got {type(layer).__name__}")
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise TypeError(f"a sync stack needs a sync inner transport (httpx.BaseTransport); got {type(inner).__name__}")
        self.layers = list(layers)
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self._entry: httpx.BaseTransport = self._chain(self.layers, self.inner)
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        return self._entry.handle_request(request)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._entry.close()


class AsyncTransportStack(_StackBase[AsyncLayer], httpx.AsyncBaseTransport):
    """An asynchronous stack, usable as ``httpx.AsyncClient(transport=stack)``."""

    def __init__(self, layers: Sequence[AsyncLayer] = (), inner: httpx.AsyncBaseTransport | None = None) -> None:
        for layer in layers:
            if not isinstance(layer, AsyncLayer):
                raise TypeError(f"an async stack takes async layers; got {type(layer).__name__}")
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(
                f"an async stack needs an async inner transport (httpx.AsyncBaseTransport); got {type(inner).__name__}"
            )
        self.layers = list(layers)
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._entry: httpx.AsyncBaseTransport = self._chain(self.layers, self.inner)
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        return await self._entry.handle_async_request(request)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._entry.aclose()

    async def aclear_cache(self) -> int:
        """As :meth:`clear_cache`, without blocking the event loop on a shared storage (Redis)."""
        cache = self.get_layer("cache")
        if cache is None:
            return 0
        aclear = getattr(cache, "aclear", None)
        return int(await aclear() if aclear is not None else cache.clear())  # type: ignore[attr-defined]

    async def ainvalidate_cache(self, prefix: str) -> int:
        """As :meth:`invalidate_cache`, without blocking the event loop on a shared storage (Redis)."""
        cache = self.get_layer("cache")
        if cache is None:
            return 0
        ainvalidate = getattr(cache, "ainvalidate", None)
        return int(await ainvalidate(prefix) if ainvalidate is not None else cache.invalidate(prefix))  # type: ignore[attr-defined]


__all__ = ["TransportStack", "AsyncTransportStack", "LayerBase"]
