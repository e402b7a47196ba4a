"""The pytest plugin shipped for users and plugin authors: fixtures that replace hand-written setup."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport import AsyncWATS, PluginError
from pywats_transport.testing import StackFactory


def test_stacks_on_a_fake_clock_expire_and_back_off_without_sleeping(transport_stack: StackFactory) -> None:
    answers = iter([503, 503, 200])
    stack = transport_stack(lambda r: httpx.Response(next(answers, 200), json={"n": 1}), profile="wats",
                            retry={"backoff_base": 5, "jitter": "none"}, enable_throttling=False)
    start = transport_stack.clock()
    with httpx.Client(transport=stack, base_url="http://t") as client:
        assert client.get("/a").status_code == 200  # two backoffs of 5 s and 10 s, passed on the clock
        assert transport_stack.clock() - start == pytest.approx(15.0)
        assert client.get("/a").extensions["caching"]["from_cache"]
        transport_stack.clock.advance(301)  # past the WATS profile's TTL
        assert not client.get("/a").extensions["caching"]["from_cache"]


@pytest.mark.anyio
async def test_async_stacks_share_the_clock(transport_stack: StackFactory) -> None:
    answers = iter([429, 200])
    stack = transport_stack(lambda r: httpx.Response(next(answers, 200), headers={"Retry-After": "20"}),
                            asynchronous=True)
    async with httpx.AsyncClient(transport=stack, base_url="http://t") as client:
        assert (await client.get("/a")).status_code == 200
    assert transport_stack.clock.now - 1_700_000_000.0 == pytest.approx(20.0)


@pytest.mark.anyio
async def test_the_emulator_fixture(wats_emulator: Any) -> None:
    async with AsyncWATS(wats_emulator.url, wats_emulator.token) as api:
        assert (await api.product.get("PN-1001")).partNumber == "PN-1001"
    assert wats_emulator.state.total_requests == 1


def test_a_plugin_manager_with_only_the_named_plugins(plugin_manager: Any, transport_stack: StackFactory) -> None:
    pm = plugin_manager("stamp")
    assert "stamp" in pm.layers() and "clasher" not in pm.layers() and not pm.broken
    stack = transport_stack(plugin_manager=pm, plugins=["stamp"])
    assert stack.names == ["cache", "retry", "stamp"]
    with pytest.raises(PluginError, match="broken"):
        plugin_manager("broken")
    with pytest.raises(LookupError, match="no installed plugin named 'nope'"):
        plugin_manager("nope")


def test_the_kit_closes_the_sync_stacks_it_built(tmp_path: Path) -> None:
    """A plugin author's suite built a stack per test and never closed one: each kept its storage (a SQLite
    connection, refresh threads) for the rest of the run."""
    test = tmp_path / "test_k.py"
    test.write_text(textwrap.dedent("""
        import httpx
        import pytest

        built = []

        def test_build(transport_stack):
            built.append(transport_stack(cache={"storage": "sqlite", "sqlite_path": "k.db"}))
            assert httpx.Client(transport=built[0]).get("http://t/a").status_code == 200

        def test_closed_after():
            with pytest.raises(RuntimeError, match="closed"):
                httpx.Client(transport=built[0]).get("http://t/a")
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_kit_can_be_switched_off(tmp_path: Path) -> None:
    test = tmp_path / "test_x.py"
    test.write_text("def test_x(wats_emulator):\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:pywats_transport", "-p", "no:cacheprovider",
                          str(test)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode != 0 and "fixture 'wats_emulator' not found" in run.stdout


@pytest.mark.parametrize("output", [None, "my plugins"])
def test_plugins_new_prints_a_pip_command_that_installs_the_folder_not_a_name_from_the_index(
        tmp_path: Path, output: str | None) -> None:
    """It printed ``pip install pywats-transport-stamp``: pip reads a bare name as a requirement and looks
    it up in the package index, where another project of that name may be."""
    import shlex

    extra = ["-o", output] if output else []
    run = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "new", "stamp", *extra],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    command = shlex.split(run.stdout.split(": ", 1)[1].split(", then")[0])
    assert command[:2] == ["pip", "install"] and len(command) == 3
    target = command[2]
    assert "/" in target or "\\" in target  # what pip takes for a path
    assert (tmp_path / target / "pyproject.toml").is_file()


def test_plugins_new_writes_a_distribution_that_installs_lists_and_passes_its_tests(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "new", "station_tag", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    project = tmp_path / "pywats-transport-station_tag"
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(project)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert "station_tag" in listed.stdout and "pywats-transport-station_tag 0.1.0" in listed.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr
    again = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "new", "station_tag", "-o",
                            str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    (tmp_path / "a-file").write_text("")
    blocked = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "new", "other", "-o",
                              str(tmp_path / "a-file")], capture_output=True, text=True, timeout=60)
    # before: a NotADirectoryError traceback
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr and "cannot write the plugin" in blocked.stderr
    bad = subprocess.run([sys.executable, "-m", "pywats_transport", "plugins", "new", "Bad-Name"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "lower-case Python identifier" in bad.stderr
