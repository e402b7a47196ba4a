"""Plugin discovery and the registry of layer specs.

Built-in layers register through the same hooks as third-party plugins, which
are found through the ``pywats_transport`` entry-point group.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import PluginError
from .hookspecs import ENTRY_POINT_GROUP, PROJECT, LayerSpec

BUILTIN_PLUGINS = (
    "pywats_transport.layers.metrics",
    "pywats_transport.layers.cache",
    "pywats_transport.layers.retry",
    "pywats_transport.layers.throttle",
)


@dataclass(frozen=True)
class LayerSource:
    spec: LayerSpec
    plugin: str  # the plugin's registered name
    origin: str  # "built-in" or "entry point <name> (<distribution> <version>)"


class PluginManager:
    """A pluggy manager plus a validated name -> layer-spec index."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs.HookSpecs)
        self._origins: dict[str, str] = {}
        for module_name in BUILTIN_PLUGINS:
            module = __import__(module_name, fromlist=["_"])
            self.register(module, name=module_name, origin="built-in")
        if load_entry_points:
            self._load_entry_points()
        self._index: dict[str, LayerSource] | None = None

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must say which one it is
                raise PluginError(f"could not load plugin entry point {ep.name!r} ({ep.value}): {exc}") from exc
            dist = getattr(ep, "dist", None)
            where = f" ({dist.name} {dist.version})" if dist is not None else ""
            self.register(plugin, name=ep.name, origin=f"entry point {ep.name}{where}")

    def register(self, plugin: Any, *, name: str | None = None, origin: str = "code") -> None:
        registered = self.pm.register(plugin, name=name)
        self._origins[registered or repr(plugin)] = origin
        self._index = None

    def layers(self) -> dict[str, LayerSource]:
        """Every known layer by name, sorted by position; duplicate names or positions are errors."""
        if self._index is not None:
            return self._index
        found: dict[str, LayerSource] = {}
        for impl in self.pm.hook.pywats_transport_layers.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            for spec in cast(Iterable[Any], impl.function() or ()):
                if not isinstance(spec, LayerSpec):
                    raise PluginError(f"plugin {plugin_name!r} returned {type(spec).__name__}, expected LayerSpec")
                source = LayerSource(spec, plugin_name, self._origins.get(plugin_name, "code"))
                if spec.name in found:
                    other = found[spec.name]
                    raise PluginError(
                        f"two layers claim the name {spec.name!r}: {other.origin} and {source.origin}; "
                        f"known layers: {', '.join(sorted(found))}"
                    )
                clash = next((s for s in found.values() if s.spec.position == spec.position), None)
                if clash is not None:
                    raise PluginError(
                        f"layers {clash.spec.name!r} and {spec.name!r} both claim position {spec.position}; "
                        "positions must be unique so that the order is deterministic"
                    )
                found[spec.name] = source
        self._index = dict(sorted(found.items(), key=lambda kv: kv[1].spec.position))
        return self._index

    def get(self, name: str) -> LayerSource:
        layers = self.layers()
        if name not in layers:
            raise PluginError(f"unknown plugin or layer {name!r}; known: {', '.join(layers) or '(none)'}")
        return layers[name]

    def notify_built(self, stack: Any, config: Any) -> None:
        self.pm.hook.pywats_transport_stack_built(stack=stack, config=config)


_default: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager(*, refresh: bool = False) -> PluginManager:
    """The process-wide plugin manager (entry points are read once; ``refresh`` reads them again)."""
    global _default
    with _lock:
        if _default is None or refresh:
            _default = PluginManager()
        return _default
