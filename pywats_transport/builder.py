"""Assemble a stack from config through the plugin manager."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import httpx

from . import ordering
from .config import BUILTIN_SECTIONS, TRANSPORT_OPTIONS, TransportConfig, validate_section
from .errors import ConfigError, PluginError
from .hookspecs import BuildContext, LayerSpec
from .plugins import PluginManager, get_plugin_manager
from .stack import AsyncTransportStack, TransportStack

#: plugins the project publishes as separate distributions, for a useful error when one is not installed
PROJECT_PLUGINS = {"circuitbreaker": "pywats-transport-circuitbreaker", "tracing": "pywats-transport-tracing"}

ConfigLike = TransportConfig | Mapping[str, Any] | str | os.PathLike[str] | None

def _network_options(flags: dict[str, Any], inner: Any) -> dict[str, Any]:
    options = {name: flags.pop(name) for name in TRANSPORT_OPTIONS if name in flags}
    if options and inner is not None:
        raise ConfigError(
            f"transport options ({', '.join(sorted(options))}) configure the network transport the builder "
            "creates; with inner= given, pass them to that transport instead"
        )
    if options.get("http2") and importlib.util.find_spec("h2") is None:
        # httpx would take it and fail at the first request a server answers in HTTP/2, deep in httpcore.
        raise ConfigError("http2=True needs the h2 package, which is not installed: pip install 'httpx[http2]'")
    return options


def resolve_layers(config: TransportConfig, pm: PluginManager) -> list[tuple[LayerSpec, Any, int]]:
    """The enabled layers, outermost first, each with its validated settings and effective position.

    Only what this stack enables is checked: a broken, blocked or clashing plugin that it does not
    enable does not affect it.
    """
    for name in config.plugins:
        if name in BUILTIN_SECTIONS:
            raise PluginError(f"{name!r} is a built-in layer: switch it with `{name}.enabled`, not `plugins`")
        if name in config.blocked_plugins:
            raise PluginError(f"plugin {name!r} is both enabled (plugins) and blocked (blocked_plugins) in this config")
        pm.load(name)  # with autoload off, the plugins a config names are loaded now
    switches = pm.switches()
    for name in config.plugins:
        if name not in switches:
            pm.check_enabled(name)
            hint = ""
            if name in PROJECT_PLUGINS:
                dist = PROJECT_PLUGINS[name]
                hint = (f"; {name!r} comes with the distribution {dist}, which is not installed: "
                        f"pip install {dist} (in a source checkout: pip install ./plugins/{dist})")
            raise PluginError(f"unknown plugin or layer {name!r}; known: {', '.join(sorted(switches))}{hint}")
    for name in config.plugin_settings:
        if name not in switches and name not in pm.broken and name not in pm.clashes:
            raise PluginError(f"plugin_settings names unknown plugin {name!r}; known: {', '.join(sorted(switches))}")
    chosen: dict[str, tuple[LayerSpec, Any]] = {}
    validated: dict[str, Any] = {}
    for name, source in pm.layers().items():
        spec = source.spec
        if name in BUILTIN_SECTIONS:
            section = config.effective(name)
            if section.enabled:
                chosen[name] = (spec, section)
        elif spec.switch in config.plugins:
            if spec.switch not in validated:
                validated[spec.switch] = validate_section(
                    spec.config_model, config.plugin_settings.get(spec.switch, {}), f"plugin_settings.{spec.switch}"
                )
            chosen[name] = (spec, validated[spec.switch])
    placed = ordering.order(
        [ordering.Placement(spec.name, spec.position, tuple(spec.before), tuple(spec.after)) for spec, _ in chosen.values()],
        positions=config.positions, explicit=config.order,
    )
    return [(chosen[name][0], chosen[name][1], position) for name, position in placed]


def _named(layer: Any, spec: LayerSpec, position: int) -> Any:
    """A layer carries its spec's name (plugin authors need not repeat it on the class) and its place."""
    if getattr(layer, "name", None) != spec.name:
        layer.name = spec.name
    layer.position = position
    return layer


def _context(config: TransportConfig, metrics_collector: Any, extra: dict[str, Any] | None) -> BuildContext:
    if metrics_collector is None and config.metrics.enabled:
        from .metrics import default_collector, global_collector

        metrics_collector = global_collector() if config.metrics.provider == "global" else default_collector()
    extra = dict(extra or {})
    return BuildContext(metrics_collector=metrics_collector, extra=extra, clock=extra.get("clock"), sleep=extra.get("sleep"))


def _assemble(config: ConfigLike, metrics_collector: Any, plugin_manager: PluginManager | None,
              plugin_context: dict[str, Any] | None,
              flags: dict[str, Any]) -> tuple[TransportConfig, PluginManager, list[Any], Any]:
    if metrics_collector is not None and not {"metrics", "enable_metrics", "metrics_enabled"} & set(flags):
        # Handing over a collector means "report into it", unless a flag says otherwise.
        flags = {**flags, "metrics_enabled": True}
    cfg = TransportConfig.load(config, **flags)
    pm = plugin_manager or get_plugin_manager()
    return cfg, pm, resolve_layers(cfg, pm), _context(cfg, metrics_collector, plugin_context)


def build_transport(
    config: ConfigLike = None,
    *,
    inner: httpx.BaseTransport | None = None,
    metrics_collector: Any = None,
    plugin_manager: PluginManager | None = None,
    plugin_context: dict[str, Any] | None = None,
    **flags: Any,
) -> TransportStack:
    """Build a sync stack from config, environment and flags; use it as ``httpx.Client(transport=...)``.

    ``plugin_context`` reaches every layer factory as ``ctx.extra`` (for example a tracer provider).
    httpx's transport options (:data:`TRANSPORT_OPTIONS`: ``verify``, ``http2``, ``limits``, ``proxy``, ...)
    configure the network transport created when ``inner`` is not given.
    """
    options = _network_options(flags, inner)
    cfg, pm, chosen, ctx = _assemble(config, metrics_collector, plugin_manager, plugin_context, flags)
    base = inner if inner is not None else httpx.HTTPTransport(**options)
    layers: list[Any] = []
    nxt: httpx.BaseTransport = base
    for spec, settings, position in reversed(chosen):
        nxt = _named(spec.sync_factory(nxt, settings, ctx), spec, position)
        layers.insert(0, nxt)
    stack = TransportStack(layers, base)
    stack.config = cfg
    pm.notify_built(stack, cfg)
    return stack


def build_async_transport(
    config: ConfigLike = None,
    *,
    inner: httpx.AsyncBaseTransport | None = None,
    metrics_collector: Any = None,
    plugin_manager: PluginManager | None = None,
    plugin_context: dict[str, Any] | None = None,
    **flags: Any,
) -> AsyncTransportStack:
    """Build an async stack from config, environment and flags; use it as ``httpx.AsyncClient(transport=...)``.

    Takes the same transport options as :func:`build_transport`.
    """
    options = _network_options(flags, inner)
    cfg, pm, chosen, ctx = _assemble(config, metrics_collector, plugin_manager, plugin_context, flags)
    base = inner if inner is not None else httpx.AsyncHTTPTransport(**options)
    layers: list[Any] = []
    nxt: httpx.AsyncBaseTransport = base
    for spec, settings, position in reversed(chosen):
        nxt = _named(spec.async_factory(nxt, settings, ctx), spec, position)
        layers.insert(0, nxt)
    stack = AsyncTransportStack(layers, base)
    stack.config = cfg
    pm.notify_built(stack, cfg)
    return stack
