from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from pywats_transport import (
    AsyncLayer,
    LayerSpec,
    PluginError,
    PluginManager,
    build_async_transport,
    build_transport,
    hookimpl,
)
from pywats_transport.config import MetricsSettings


def echo_headers() -> httpx.MockTransport:
    return httpx.MockTransport(lambda r: httpx.Response(200, json=dict(r.headers)))


def test_installed_distribution_is_discovered_through_entry_points() -> None:
    layers = PluginManager().layers()
    core = {"metrics", "cache", "retry", "stamp", "throttle"}
    assert [name for name in layers if name in core] == ["metrics", "cache", "retry", "stamp", "throttle"]
    assert layers["stamp"].origin == "entry point stamp (pywats-transport-testplugin 0.1.0)"
    assert layers["cache"].origin == "built-in"


def test_plugin_enabled_by_name_sits_at_its_position_sync() -> None:
    stack = build_transport(inner=echo_headers(), plugins=["stamp"], plugin_settings={"stamp": {"value": "v1"}},
                            enable_throttling=True)
    assert stack.names == ["cache", "retry", "stamp", "throttle"]
    with httpx.Client(transport=stack) as client:
        assert client.get("http://t/").json()["x-stamp"] == "v1"
    assert stack.stats()["stamp"] == {"stamped": 1}


@pytest.mark.anyio
async def test_plugin_enabled_by_name_sits_at_its_position_async() -> None:
    stack = build_async_transport(inner=echo_headers(), plugins=["stamp"], enable_cache=False, enable_throttling=True)
    assert stack.names == ["retry", "stamp", "throttle"]
    assert isinstance(stack.layer("stamp"), AsyncLayer)
    async with httpx.AsyncClient(transport=stack) as client:
        assert (await client.get("http://t/")).json()["x-stamp"] == "stamped"


def test_unknown_plugin_names_known_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown plugin or layer 'nope'; known: (\w+, )*stamp\b"):
        build_transport(plugins=["nope"])
    with pytest.raises(PluginError, match="plugin_settings names unknown plugin 'ghost'"):
        build_transport(plugin_settings={"ghost": {}})


def test_plugin_settings_validated_by_plugin_model() -> None:
    from pywats_transport import ConfigError

    with pytest.raises(ConfigError, match=r"plugin_settings\.stamp: colour: unknown key"):
        build_transport(plugins=["stamp"], plugin_settings={"stamp": {"colour": "red"}})


class Clash:
    @hookimpl
    def pywats_transport_layers(self) -> list[LayerSpec]:
        return [LayerSpec("cache", 999, MetricsSettings, lambda i, s, c: i, lambda i, s, c: i)]


class SamePosition:
    @hookimpl
    def pywats_transport_layers(self) -> list[LayerSpec]:
        return [LayerSpec("other", 200, MetricsSettings, lambda i, s, c: i, lambda i, s, c: i)]


def test_duplicate_name_is_an_error() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(Clash(), name="clash")
    with pytest.raises(PluginError, match="two layers claim the name 'cache': built-in and code"):
        pm.layers()


def test_duplicate_position_is_an_error() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(SamePosition(), name="same")
    with pytest.raises(PluginError, match="'cache' and 'other' both claim position 200"):
        pm.layers()


def test_stack_built_hook_can_veto() -> None:
    class Veto:
        @hookimpl
        def pywats_transport_stack_built(self, stack, config) -> None:  # type: ignore[no-untyped-def]
            if "throttle" not in stack.names:
                raise RuntimeError("this deployment requires throttling")

    pm = PluginManager(load_entry_points=False)
    pm.register(Veto(), name="veto")
    build_transport(inner=echo_headers(), plugin_manager=pm, enable_throttling=True)
    with pytest.raises(RuntimeError, match="requires throttling"):
        build_transport(inner=echo_headers(), plugin_manager=pm)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pywats_transport", *args], capture_output=True, text=True, timeout=60)


def test_cli_stack_json_and_plugins(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"plugins": ["stamp"], "metrics": {"enabled": True}, "throttle": {"enabled": True}}))
    out = run_cli("stack", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    assert [d["name"] for d in json.loads(out.stdout)] == ["metrics", "cache", "retry", "stamp", "throttle", "transport"]
    out = run_cli("plugins")
    assert "stamp" in out.stdout and "pywats-transport-testplugin" in out.stdout
    cfg.write_text(json.dumps({"cache": {"ttl": -5}}))
    out = run_cli("stack", "--config", str(cfg))
    assert out.returncode == 2 and "cache.ttl = -5" in out.stderr
