"""A pytest plugin for apps and plugin authors that use pywats-transport (registered as ``pytest11``).

Fixtures:

- ``wats_emulator``: a running embedded WATS emulator on 127.0.0.1 (``.url``, ``.token``, ``.state``
  with its data and counters, ``.outage(seconds, mode)``, adjustable ``.state.faults``);
- ``transport_stack``: a factory of stacks over an ``httpx.MockTransport`` (or any transport you
  pass), on a fake clock: TTLs expire and backoffs and throttle waits pass when the test says so,
  without sleeping (``transport_stack.clock.advance(61)``); the sync stacks it built are closed after
  the test (an async one belongs to the test's event loop: close it there, ``async with
  httpx.AsyncClient(transport=stack)``);
- ``plugin_manager``: a factory of plugin managers holding the built-ins and only the plugins a test
  names (plugin objects or modules, or installed entry-point names).

Opt out with ``pytest -p no:pywats_transport``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .builder import build_async_transport, build_transport
from .emulator import EmulatorServer
from .plugins import PluginManager

EMULATOR_TOKEN = "pytest-wats-token"


class FakeClock:
    """A clock that moves only when told to; its sleeps move it instead of waiting."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"path": request.url.path})


class StackFactory:
    """``transport_stack(handler, asynchronous=False, **flags)`` -> a stack on :attr:`clock`."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self._stacks: list[Any] = []

    def __call__(self, handler: Callable[[httpx.Request], httpx.Response] | Any = None, *,
                 asynchronous: bool = False, plugin_manager: PluginManager | None = None, **flags: Any) -> Any:
        if isinstance(handler, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            inner = handler
        else:
            inner = httpx.MockTransport(handler or _ok)
        context = {"clock": self.clock, "sleep": self.clock.asleep if asynchronous else self.clock.sleep}
        build: Any = build_async_transport if asynchronous else build_transport
        stack = build(inner=inner, plugin_manager=plugin_manager, plugin_context=context, **flags)
        self._stacks.append(stack)
        return stack

    def close(self) -> None:
        """Close the sync stacks built (their storages' files and threads); async ones are their loop's."""
        for stack in self._stacks:
            if isinstance(stack, httpx.BaseTransport):
                stack.close()
        self._stacks.clear()


@pytest.fixture
def wats_emulator() -> Iterator[EmulatorServer]:
    """A running WATS emulator; requests need ``Authorization: Basic <wats_emulator.token>``."""
    with EmulatorServer(token=EMULATOR_TOKEN) as server:
        server.token = EMULATOR_TOKEN  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def transport_stack() -> Iterator[StackFactory]:
    """Stacks over a mock transport on a fake clock (``transport_stack.clock``); sync ones closed after."""
    factory = StackFactory()
    yield factory
    factory.close()


@pytest.fixture
def plugin_manager() -> Callable[..., PluginManager]:
    """``plugin_manager(my_plugin, "stamp")``: the built-ins plus only these plugins."""

    def make(*plugins: Any) -> PluginManager:
        pm = PluginManager(load_entry_points=False)
        for plugin in plugins:
            if isinstance(plugin, str):
                if not pm.load(plugin):
                    pm.check_enabled(plugin)
                    raise LookupError(f"no installed plugin named {plugin!r}; installed: {', '.join(pm.installed())}")
            else:
                pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
        return pm

    return make
