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
    #: a clock and a sleep for every layer that expires or waits (the testing kit's fake clock, so that
    #: TTLs and backoffs run instantly); None: real time
    clock: Callable[[], float] | None = None
    sleep: Callable[[float], Any] | None = None

    def clock_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a layer that only reads the time (the cache)."""
        return {"clock": self.clock} if self.clock is not None else {}

    def waiting_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a layer that waits (retry, throttle): its sleep and its policy's clocks."""
        out: dict[str, Any] = {}
        if self.sleep is not None:
            out["sleep"] = self.sleep
        if self.clock is not None:
            out["policy_kwargs"] = {"clock": self.clock, "wall_clock": self.clock}
        return out


SyncFactory = Callable[[httpx.BaseTransport, Any, BuildContext], httpx.BaseTransport]
AsyncFactory = Callable[[httpx.AsyncBaseTransport, Any, BuildContext], httpx.AsyncBaseTransport]


@dataclass(frozen=True)
class LayerSpec:
    """A layer a plugin contributes.

    ``position``: lower is further out (metrics 100, cache 200, retry 300,
    throttle 400); plugin layers pick their own. ``before`` / ``after``: names of layers this one must
    sit outside of / inside of, when a stack has them too; they win over positions, which break ties.
    Two layers of one stack at one position with nothing ordering them is an error the user can settle
    in the config (``positions`` or ``order``).
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
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

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
