"""The plugin contract (pluggy project name ``pywats_transport``).

A plugin is any module or object with functions marked ``@hookimpl``; it is
registered either as a built-in or through the ``pywats_transport`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    from .stack import AsyncTransportStack, TransportStack

PROJECT = "pywats_transport"
ENTRY_POINT_GROUP = "pywats_transport"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass
class BuildContext:
    """What a layer factory may need besides its settings."""

    metrics_collector: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


SyncFactory = Callable[[httpx.BaseTransport, Any, BuildContext], httpx.BaseTransport]
AsyncFactory = Callable[[httpx.AsyncBaseTransport, Any, BuildContext], httpx.AsyncBaseTransport]


@dataclass(frozen=True)
class LayerSpec:
    """A layer a plugin contributes.

    ``position``: lower is further out (metrics 100, cache 200, retry 300,
    throttle 400); plugin layers pick their own, and two layers may not share one.
    Factories are called as ``factory(inner, settings, context)``.
    ``enabled_by``: the plugin name that switches this layer on (default: its own name), so that
    one plugin can place several layers (say, one outside retry and one inside) under one switch
    and one settings section.
    """

    name: str
    position: int
    config_model: type[BaseModel]
    sync_factory: SyncFactory
    async_factory: AsyncFactory
    description: str = ""
    enabled_by: str | None = None

    @property
    def switch(self) -> str:
        return self.enabled_by or self.name


class HookSpecs:
    @hookspec
    def pywats_transport_layers(self) -> list[LayerSpec]:  # type: ignore[empty-body]
        """Return the layers this plugin contributes."""

    @hookspec
    def pywats_transport_stack_built(
        self, stack: TransportStack | AsyncTransportStack, config: Any
    ) -> None:
        """Observe an assembled stack; raise to veto it."""
