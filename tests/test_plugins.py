from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from pywats_transport import (
    AsyncLayer,
    Layer,
    LayerSpec,
    PluginError,
    PluginManager,
    build_async_transport,
    build_transport,
    hookimpl,
)
from pywats_transport.cli import main as cli_main
from pywats_transport.config import MetricsSettings, TransportConfig

from . import fixture_plugins


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


@pytest.mark.anyio
async def test_plugins_given_as_one_string_are_names_not_letters() -> None:
    """``plugins="stamp"`` was read a letter at a time ("unknown plugin or layer 's'"), in the builders and
    the WATS clients alike; a string now names plugins as the environment variable does, comma-separated."""
    from pywats_transport import WATS, AsyncWATS

    assert build_transport(plugins="stamp").names == ["cache", "retry", "stamp"]
    assert sorted(build_async_transport(plugins=" stamp , circuitbreaker ").names) == ["cache", "circuitbreaker",
                                                                                      "retry", "stamp"]
    with WATS("http://wats.test", "t", plugins="stamp") as api:
        assert api.transport.names == ["cache", "retry", "stamp", "throttle"]
    async with AsyncWATS("http://wats.test", "t", plugins="stamp,circuitbreaker") as aapi:
        assert sorted(aapi.transport.names) == ["cache", "circuitbreaker", "retry", "stamp", "throttle"]


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
        return [LayerSpec("cache", 999, MetricsSettings, lambda i, s, c: Layer(i), lambda i, s, c: AsyncLayer(i))]


class SamePosition:
    @hookimpl
    def pywats_transport_layers(self) -> list[LayerSpec]:
        return [LayerSpec("other", 200, MetricsSettings, lambda i, s, c: Layer(i), lambda i, s, c: AsyncLayer(i))]


def test_a_plugin_claiming_a_built_in_name_is_broken_not_fatal() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(Clash(), name="clash")
    assert pm.layers()["cache"].origin == "built-in"  # the built-in keeps its name and its place
    assert "claims the built-in layer name 'cache'" in pm.broken["clash"].error
    assert build_transport(inner=echo_headers(), plugin_manager=pm).names == ["cache", "retry"]


def test_a_shared_position_matters_only_when_both_are_enabled() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(SamePosition(), name="other")
    assert build_transport(inner=echo_headers(), plugin_manager=pm).names == ["cache", "retry"]
    with pytest.raises(PluginError, match=r"layers 'cache' and 'other' both sit at position 200.*positions"):
        build_transport(inner=echo_headers(), plugin_manager=pm, plugins=["other"])
    settled = build_transport(inner=echo_headers(), plugin_manager=pm, plugins=["other"], positions={"other": 250})
    assert settled.names == ["cache", "other", "retry"]


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


# -- plugins that cannot break the host ---------------------------------------------------------------

def test_installed_broken_plugins_affect_no_stack_that_does_not_enable_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="pywats_transport.plugins")
    pm = PluginManager()
    pm.layers()
    assert set(pm.broken) == {"broken", "hookfail"}
    assert [r.getMessage().count("broken") > 0 for r in caplog.records].count(True) == 2  # logged once each
    assert "pywats-transport-brokenplugin 0.3.1" in pm.broken["broken"].origin
    for builder in (build_transport, build_async_transport):
        assert builder(inner=echo_headers(), plugin_manager=pm, plugins=["stamp"]).names == ["cache", "retry", "stamp"]
    with pytest.raises(PluginError, match=r"'broken' .*pywats-transport-brokenplugin 0\.3\.1.*ModuleNotFoundError"):
        build_transport(plugin_manager=pm, plugins=["broken"])
    with pytest.raises(PluginError, match=r"'hookfail' .*RuntimeError: hookfail could not read its license file"):
        build_transport(plugin_manager=pm, plugins=["hookfail"])


def test_cli_lists_broken_plugins_and_strict_fails() -> None:
    out = run_cli("plugins")
    assert out.returncode == 0 and "[broken: ModuleNotFoundError" in out.stdout and "stamp" in out.stdout
    strict = run_cli("plugins", "--strict")
    assert strict.returncode == 3
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "--json").stdout)}
    assert rows["hookfail"]["status"] == "broken" and rows["clasher"]["status"] == "ok"


def test_the_environment_the_readme_sets_up_has_no_broken_plugin_outside_the_tests() -> None:
    """The suite's deliberately broken plugins are installed for its session alone: installed by the
    README's test command, they made every command run in that environment afterwards (the demo among
    them) begin with a warning about each, and ``plugins --strict`` fail."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", fixture_plugins.ENV)}
    out = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "--strict"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0 and "broken" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert "stamp" not in out.stdout and "stamp" in run_cli("plugins").stdout  # the session's own, still there


def test_independent_plugins_at_one_position_are_settled_by_the_user() -> None:
    assert build_transport(inner=echo_headers(), plugins=["clasher"]).names == ["cache", "retry", "clasher"]
    with pytest.raises(PluginError, match=r"'clasher' and 'stamp' both sit at position 350"):
        build_transport(inner=echo_headers(), plugins=["stamp", "clasher"])
    by_position = build_transport(inner=echo_headers(), plugins=["stamp", "clasher"], positions={"clasher": 360})
    assert by_position.names == ["cache", "retry", "stamp", "clasher"]
    by_order = build_transport(inner=echo_headers(), plugins=["stamp", "clasher"],
                               order=["clasher", "cache", "retry", "stamp"])
    assert by_order.names == ["clasher", "cache", "retry", "stamp"]
    described = {item["name"]: item.get("position") for item in by_position.describe()}
    assert described["clasher"] == 360 and described["stamp"] == 350
    with pytest.raises(PluginError, match=r"order must name each enabled layer once.*missing stamp"):
        build_transport(inner=echo_headers(), plugins=["stamp", "clasher"], order=["clasher", "cache", "retry"])


def test_a_layer_is_named_after_its_spec() -> None:
    stack = build_transport(inner=echo_headers(), plugins=["clasher"])
    layer = stack.layer("clasher")  # its class never set a name
    assert layer.name == "clasher" and stack.stats()["clasher"] == {"clashed": True}


def test_unknown_plugin_settings_are_refused_whatever_the_model_says() -> None:
    from pydantic import BaseModel

    from pywats_transport import ConfigError

    class Loose(BaseModel):  # extras ignored by pydantic's default
        value: int = 1

    class LoosePlugin:
        @hookimpl
        def pywats_transport_layers(self) -> list[LayerSpec]:
            return [LayerSpec("loose", 450, Loose, lambda i, s, c: i, lambda i, s, c: i)]

    pm = PluginManager(load_entry_points=False)
    pm.register(LoosePlugin(), name="loose")
    with pytest.raises(ConfigError, match=r"plugin_settings\.loose: valeu: unknown key; allowed keys: value"):
        build_transport(plugin_manager=pm, plugins=["loose"], plugin_settings={"loose": {"valeu": 2}})
    with pytest.raises(ConfigError, match=r"clasher.*colour: unknown key"):
        build_transport(plugins=["clasher"], plugin_settings={"clasher": {"colour": "red"}})


def _relative(name: str, position: int, **where: tuple[str, ...]) -> Any:
    class Relative:
        @hookimpl
        def pywats_transport_layers(self) -> list[LayerSpec]:
            return [LayerSpec(name, position, MetricsSettings, lambda i, s, c: RecorderLayer(i),
                              lambda i, s, c: AsyncRecorderLayer(i), **where)]
    return Relative()


class RecorderLayer(Layer):
    pass


class AsyncRecorderLayer(AsyncLayer):
    pass


def test_before_and_after_win_over_positions_and_cycles_are_named() -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(_relative("audit", 900, before=("cache",)), name="audit")  # a high number, placed by constraint
    pm.register(_relative("sign", 10, after=("retry",)), name="sign")
    stack = build_transport(inner=echo_headers(), plugin_manager=pm, plugins=["audit", "sign"])
    assert stack.names == ["audit", "cache", "retry", "sign"]
    pm2 = PluginManager(load_entry_points=False)
    pm2.register(_relative("a", 410, before=("b",)), name="a")
    pm2.register(_relative("b", 420, before=("a",)), name="b")
    with pytest.raises(PluginError, match=r"constraints of layers a, b form a cycle"):
        build_transport(inner=echo_headers(), plugin_manager=pm2, plugins=["a", "b"])


def test_blocking_and_autoload_off() -> None:
    blocked = PluginManager(environ={"PYWATS_TRANSPORT_BLOCK_PLUGINS": "stamp,broken"})
    assert "stamp" not in blocked.layers() and "broken" not in blocked.broken
    with pytest.raises(PluginError, match=r"plugin 'stamp' is blocked"):
        build_transport(plugin_manager=blocked, plugins=["stamp"])
    with pytest.raises(PluginError, match=r"both enabled .* and blocked"):
        build_transport(plugins=["stamp"], blocked_plugins=["stamp"])
    manual = PluginManager(environ={"PYWATS_TRANSPORT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert not manual.broken and "stamp" not in manual.layers()  # nothing imported
    assert build_transport(inner=echo_headers(), plugin_manager=manual, plugins=["stamp"]).names[-1] == "stamp"
    assert set(manual.broken) == set()  # still only what was named


def test_the_process_wide_plugin_switches_are_not_config_keys(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # They share the config's prefix: each made every config resolution fail as an unknown key.
    monkeypatch.setenv("PYWATS_TRANSPORT_BLOCK_PLUGINS", "stamp")
    monkeypatch.setenv("PYWATS_TRANSPORT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYWATS_TRANSPORT_CACHE__TTL", "42")
    config = TransportConfig.load()
    assert config.cache.ttl == 42 and config.blocked_plugins == []
    pm = PluginManager()
    assert not pm.autoload and pm.blocked == {"stamp"}
    assert "cache" in build_transport(inner=echo_headers(), plugin_manager=pm, cache=True).names
    with pytest.raises(PluginError, match=r"plugin 'stamp' is blocked"):
        build_transport(plugin_manager=pm, plugins=["stamp"])
    assert cli_main(["stack"]) == 0
    assert "ttl = 42.0  (environment PYWATS_TRANSPORT_CACHE__TTL)" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_disabled_and_bypass_switch_a_layer_off_for_a_block(mode: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={}, headers={"cache-control": "max-age=60"})

    builder = build_transport if mode == "sync" else build_async_transport
    stack = builder(inner=httpx.MockTransport(handler))
    client: Any = httpx.Client(transport=stack) if mode == "sync" else httpx.AsyncClient(transport=stack)

    async def get() -> httpx.Response:
        return client.get("http://t/a") if mode == "sync" else await client.get("http://t/a")

    await get()
    await get()
    assert len(calls) == 1
    with stack.disabled("cache"):
        await get()
    with stack.bypass("cache"):
        await get()
    assert len(calls) == 3 and (await get()).extensions["caching"]["from_cache"]
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        with stack.bypass("nope"):
            pass
    if mode == "sync":
        client.close()
    else:
        await client.aclose()
