"""``pywats-transport plugins new NAME``: a working plugin distribution to start from."""

from __future__ import annotations

import keyword
from pathlib import Path

from .config import BUILTIN_SECTIONS
from .errors import ConfigError

PYPROJECT = '''[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "pywats-transport-{name}"
version = "0.1.0"
description = "A pywats-transport layer plugin: {name}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["pywats-transport"]

[project.optional-dependencies]
test = ["pytest>=8", "anyio>=4"]

# This is what makes `plugins=["{name}"]` find it.
[project.entry-points.pywats_transport]
{name} = "{package}.plugin"

[tool.hatch.build.targets.wheel]
packages = ["{package}"]
'''

README = '''# pywats-transport-{name}

A layer plugin for pywats-transport. Install it (`pip install .`), check that
`pywats-transport plugins` lists `{name}`, and enable it:

```python
from pywats_transport import build_transport

stack = build_transport(plugins=["{name}"], plugin_settings={{"{name}": {{"header": "X-Station", "value": "line-3"}}}})
```

Tests: `pip install '.[test]' && pytest` (they use the pywats-transport testing kit's fixtures).
'''

INIT = '''"""pywats-transport plugin {name}."""

from .plugin import Async{cls}Layer, {cls}Layer, {cls}Settings

__all__ = ["{cls}Layer", "Async{cls}Layer", "{cls}Settings"]
'''

PLUGIN = '''"""The {name} layer: sets a header on every attempt (replace with what your layer does)."""

from __future__ import annotations

from typing import Any

import httpx

from pywats_transport import AsyncLayer, Layer, LayerSpec, PluginSettings, hookimpl


class {cls}Settings(PluginSettings):
    """Settings under `plugin_settings.{name}`; unknown keys are refused."""

    header: str = "X-{cls}"
    value: str = "on"


class {cls}Layer(Layer):
    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: {cls}Settings | None = None) -> None:
        super().__init__(inner, settings=settings or {cls}Settings())
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        request.headers[self.settings.header] = self.settings.value
        return self.inner.handle_request(request)

    def stats(self) -> dict[str, Any]:
        return {{"requests": self.count}}


class Async{cls}Layer(AsyncLayer):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: {cls}Settings | None = None) -> None:
        super().__init__(inner, settings=settings or {cls}Settings())
        self.count = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        request.headers[self.settings.header] = self.settings.value
        return await self.inner.handle_async_request(request)

    def stats(self) -> dict[str, Any]:
        return {{"requests": self.count}}


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="{name}",
            position=450,  # inside throttle (400): every attempt passes through it
            after=("retry",),
            config_model={cls}Settings,
            sync_factory=lambda inner, settings, ctx: {cls}Layer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: Async{cls}Layer(inner, settings=settings),
            description="sets a header on every attempt",
        )
    ]
'''

TEST = '''"""Tests with the pywats-transport testing kit (fixtures `transport_stack` and `plugin_manager`)."""

from __future__ import annotations

import httpx
import pytest

from {package} import plugin


def echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=dict(request.headers))


def test_sync_layer_sets_the_header(transport_stack, plugin_manager) -> None:
    stack = transport_stack(echo, plugin_manager=plugin_manager(plugin), plugins=["{name}"],
                            plugin_settings={{"{name}": {{"value": "line-3"}}}})
    with httpx.Client(transport=stack, base_url="http://test") as client:
        assert client.get("/").json()["x-{lower}"] == "line-3"
    assert stack.stats()["{name}"] == {{"requests": 1}}


@pytest.mark.anyio
async def test_async_layer_sets_the_header(transport_stack, plugin_manager) -> None:
    stack = transport_stack(echo, asynchronous=True, plugin_manager=plugin_manager(plugin), plugins=["{name}"])
    async with httpx.AsyncClient(transport=stack, base_url="http://test") as client:
        assert (await client.get("/")).json()["x-{lower}"] == "on"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
'''


def write_plugin(name: str, output: str | Path = ".") -> Path:
    """Write ``pywats-transport-<name>/`` under ``output``; returns its folder."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ConfigError(f"plugin name {name!r}: use a lower-case Python identifier, e.g. useragent or fixture_check")
    if name in BUILTIN_SECTIONS:
        raise ConfigError(f"plugin name {name!r} is a built-in layer's; built-ins: {', '.join(BUILTIN_SECTIONS)}")
    root = Path(output) / f"pywats-transport-{name}"
    if root.exists():
        raise ConfigError(f"{root} exists; choose another name or --output")
    package = f"pywats_transport_{name}"
    cls = "".join(part.capitalize() for part in name.split("_"))
    values = {"name": name, "package": package, "cls": cls, "lower": cls.lower()}
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / package / "__init__.py": INIT,
        root / package / "plugin.py": PLUGIN,
        root / "tests" / f"test_{name}.py": TEST,
    }
    try:
        for path, template in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(**values), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the plugin under --output {str(output)!r}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from None
    return root
