"""Plugin discovery and the registry of layer specs.

Built-in layers register through the same hooks as third-party plugins, which are found through the
``pywats_transport`` entry-point group. As in pytest, an installed plugin that cannot be loaded, or
whose hook fails, is recorded and reported, not fatal: it affects only a stack that enables it.
The user has the last word: ``PYWATS_TRANSPORT_BLOCK_PLUGINS=a,b`` (or ``block=``) keeps plugins from
loading at all, and ``PYWATS_TRANSPORT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the plugins a config names.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import pluggy

from . import hookspecs
from .config import ENV_BLOCK, ENV_DISABLE_AUTOLOAD
from .errors import PluginError
from .hookspecs import ENTRY_POINT_GROUP, PROJECT, LayerSpec

log = logging.getLogger("pywats_transport.plugins")

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


@dataclass(frozen=True)
class BrokenPlugin:
    """An installed plugin that could not be loaded, or whose hook failed."""

    name: str
    origin: str
    error: str

    def message(self) -> str:
        return f"plugin {self.name!r} ({self.origin}) is broken: {self.error}"


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class PluginManager:
    """A pluggy manager plus a name -> layer-spec index that tolerates broken and clashing plugins."""

    def __init__(self, *, load_entry_points: bool | None = None, block: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs.HookSpecs)
        self._origins: dict[str, str] = {}
        self.blocked: set[str] = set(block) | _names(env.get(ENV_BLOCK))
        self.autoload = load_entry_points if load_entry_points is not None else not _truthy(env.get(ENV_DISABLE_AUTOLOAD))
        self.broken: dict[str, BrokenPlugin] = {}
        #: layer name -> every source claiming it, when more than one third-party plugin does
        self.clashes: dict[str, list[LayerSource]] = {}
        self._index: dict[str, LayerSource] | None = None
        self._lock = threading.RLock()
        for module_name in BUILTIN_PLUGINS:
            module = __import__(module_name, fromlist=["_"])
            self.register(module, name=module_name, origin="built-in")
        self._entry_points = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if self.autoload:
            for name in sorted(self._entry_points):
                self.load(name)

    # -- loading ------------------------------------------------------------------------

    @staticmethod
    def _origin_of(ep: metadata.EntryPoint) -> str:
        dist = getattr(ep, "dist", None)
        where = f" ({dist.name} {dist.version})" if dist is not None else ""
        return f"entry point {ep.name}{where}"

    def installed(self) -> list[str]:
        """Names of the plugins installed in the entry-point group, loaded or not."""
        return sorted(self._entry_points)

    def load(self, name: str) -> bool:
        """Load the installed plugin ``name`` now (with autoload off: the ones a config enables)."""
        with self._lock:
            if name in self.blocked or name in self.broken:
                return False
            if self.pm.has_plugin(name):
                return True
            ep = self._entry_points.get(name)
            if ep is None:
                return False
            origin = self._origin_of(ep)
            try:
                plugin = ep.load()
            except Exception as exc:  # reported, and fatal only to a stack that enables it
                self._broke(name, origin, exc)
                return False
            if not self.pm.is_registered(plugin):  # a test may have registered the same module itself
                self.register(plugin, name=name, origin=origin)
            return True

    def _broke(self, name: str, origin: str, exc: BaseException) -> None:
        broken = BrokenPlugin(name, origin, f"{type(exc).__name__}: {exc}")
        self.broken[name] = broken
        log.warning("%s; stacks that do not enable it are not affected", broken.message())

    def register(self, plugin: Any, *, name: str | None = None, origin: str = "code") -> None:
        with self._lock:
            registered = self.pm.register(plugin, name=name)
            self._origins[registered or repr(plugin)] = origin
            self._index = None

    # -- the index ------------------------------------------------------------------------

    def layers(self) -> dict[str, LayerSource]:
        """Every usable layer by name, sorted by position. Broken plugins and layer names claimed twice
        are left out (and recorded in :attr:`broken` and :attr:`clashes`)."""
        with self._lock:
            if self._index is not None:
                return self._index
            found: dict[str, LayerSource] = {}
            claims: dict[str, list[LayerSource]] = {}
            for impl in self.pm.hook.pywats_transport_layers.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                origin = self._origins.get(plugin_name, "code")
                if plugin_name in self.broken:
                    continue
                try:
                    specs = list(cast(Iterable[Any], impl.function() or ()))
                    bad = [s for s in specs if not isinstance(s, LayerSpec)]
                    if bad:
                        raise TypeError(f"its hook returned {type(bad[0]).__name__}, expected LayerSpec")
                except Exception as exc:
                    self._broke(plugin_name, origin, exc)
                    continue
                for spec in specs:
                    claims.setdefault(spec.name, []).append(LayerSource(spec, plugin_name, origin))
            self.clashes = {}
            for name, sources in claims.items():
                builtin = [s for s in sources if s.origin == "built-in"]
                if len(sources) == 1:
                    found[name] = sources[0]
                elif builtin:
                    found[name] = builtin[0]  # a built-in name stays the built-in's
                    for other in sources:
                        if other is not builtin[0]:
                            self._broke(other.plugin, other.origin, PluginError(f"claims the built-in layer name {name!r}"))
                else:
                    self.clashes[name] = sources
            self._index = dict(sorted(found.items(), key=lambda kv: (kv[1].spec.position, kv[0])))
            return self._index

    def switches(self) -> set[str]:
        return {source.spec.switch for source in self.layers().values()}

    def check_enabled(self, name: str) -> None:
        """Raise the :class:`PluginError` that explains why plugin ``name`` cannot be enabled, if it cannot."""
        self.layers()
        if name in self.blocked:
            raise PluginError(f"plugin {name!r} is blocked ({ENV_BLOCK} or block=); unblock it to enable it")
        if name in self.broken:
            raise PluginError(self.broken[name].message())
        if name in self.clashes:
            origins = " and ".join(s.origin for s in self.clashes[name])
            raise PluginError(f"two plugins provide a layer named {name!r}: {origins}; uninstall or block one")

    def get(self, name: str) -> LayerSource:
        layers = self.layers()
        if name not in layers:
            self.check_enabled(name)
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
