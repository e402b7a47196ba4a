"""The layer model: a layer wraps an inner transport and is a transport itself.

Following the httpx convention the wrapped transport is the first constructor
argument. A layer may also be created unbound (``inner=None``) and handed to a
stack, which binds it to the next layer inward.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from .config import redacted

T = TypeVar("T", httpx.BaseTransport, httpx.AsyncBaseTransport)
S = TypeVar("S", bound=BaseModel)

CLOSED_MESSAGE = "Cannot send a request, as the transport has been closed."


def layer_settings(model: type[S], settings: S | None, overrides: dict[str, Any], owner: str) -> S:
    """A layer's settings from a model and/or keyword overrides, validated; bad input is a :class:`ConfigError`."""
    from .config import describe_validation_error

    if settings is None and not overrides:
        return model()
    data = {**(settings.model_dump() if settings is not None else {}), **overrides}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe_validation_error(exc, model, owner) from None


class LayerBase(Generic[T]):
    """What sync and async layers share: name, settings, statistics, binding."""

    name: ClassVar[str] = "layer"
    #: the transport base class this layer wraps and is (sync or async)
    _kind: ClassVar[type] = object
    #: the layer's effective settings (a pydantic model), shown by describe()
    settings: Any
    #: where a built stack placed it (set by the builder; None for a stack composed in code)
    position: int | None = None

    def __init__(self, inner: T | None = None, *, settings: BaseModel | None = None) -> None:
        self._inner: T | None = None
        if inner is not None:
            self._check_inner(inner)
            self._inner = inner
        self.settings = settings
        self._closed = False

    def _check_inner(self, inner: Any) -> None:
        # A sync layer over an async transport (or the reverse) would fail only on first use, deep inside httpx.
        if not isinstance(inner, self._kind):
            kind = "a sync" if self._kind is httpx.BaseTransport else "an async"
            other = ("an async transport: build_async_transport() and the async layers take it"
                     if isinstance(inner, httpx.AsyncBaseTransport) else
                     "a sync transport: build_transport() and the sync layers take it"
                     if isinstance(inner, httpx.BaseTransport) else "not an httpx transport")
            raise TypeError(
                f"{type(self).__name__} is {kind} layer and needs {kind} transport "
                f"({self._kind.__module__}.{self._kind.__qualname__}) to wrap; got {type(inner).__name__}, {other}"
            )

    @property
    def inner(self) -> T:
        if self._inner is None:
            raise RuntimeError(f"layer {self.name!r} is not bound to an inner transport; put it in a stack or pass inner=")
        return self._inner

    def bind(self, inner: T) -> None:
        if self._inner is not None and self._inner is not inner:
            raise ValueError(f"layer {self.name!r} already wraps {type(self._inner).__name__}; create a new layer per stack")
        self._check_inner(inner)
        self._inner = inner

    def describe(self) -> dict[str, Any]:
        """Name and effective settings, JSON-serialisable."""
        settings = redacted(self.settings.model_dump(mode="json")) if self.settings is not None else {}
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}", "settings": settings}

    def stats(self) -> dict[str, Any]:
        """Per-layer statistics as a plain dict; layers with counters override this."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


class Layer(LayerBase[httpx.BaseTransport], httpx.BaseTransport):
    """A synchronous layer. Subclasses implement :meth:`handle_request` and may override :meth:`close_layer`."""

    _kind = httpx.BaseTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close_layer(self) -> None:
        """Release what this layer owns (not the inner transport)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.close_layer()
        finally:
            if self._inner is not None:
                self._inner.close()


class AsyncLayer(LayerBase[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """An asynchronous layer. Subclasses implement :meth:`handle_async_request` and may override :meth:`aclose_layer`."""

    _kind = httpx.AsyncBaseTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose_layer(self) -> None:
        """Release what this layer owns (not the inner transport)."""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.aclose_layer()
        finally:
            if self._inner is not None:
                await self._inner.aclose()
