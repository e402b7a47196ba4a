"""Writing a plugin: a layer, its settings model, and a hook that returns its LayerSpec.

Published in a distribution, the module is named in pyproject.toml:

    [project.entry-points.pywats_transport]
    useragent = "my_package.plugin"

Here it is registered in code to keep the example in one file.
"""

import httpx
from pydantic import BaseModel

from pywats_transport import AsyncLayer, Layer, LayerSpec, PluginManager, build_transport, hookimpl
from pywats_transport.emulator import EmulatorServer


class UserAgentSettings(BaseModel):
    value: str = "station/1.0"


class UserAgentLayer(Layer):
    name = "useragent"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["User-Agent"] = self.settings.value  # type: ignore[union-attr]
        return self.inner.handle_request(request)


class AsyncUserAgentLayer(AsyncLayer):
    name = "useragent"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["User-Agent"] = self.settings.value  # type: ignore[union-attr]
        return await self.inner.handle_async_request(request)


class UserAgentPlugin:
    @hookimpl
    def pywats_transport_layers(self) -> list[LayerSpec]:
        return [LayerSpec(
            name="useragent", position=450, config_model=UserAgentSettings,
            sync_factory=lambda inner, settings, ctx: UserAgentLayer(inner, settings=settings),
            async_factory=lambda inner, settings, ctx: AsyncUserAgentLayer(inner, settings=settings),
            description="sets the User-Agent of every attempt",
        )]


pm = PluginManager()
pm.register(UserAgentPlugin(), name="useragent")
stack = build_transport(plugin_manager=pm, plugins=["useragent"], plugin_settings={"useragent": {"value": "line-3"}})
print("chain:", " -> ".join(stack.names))

with EmulatorServer() as emulator:
    with httpx.Client(base_url=emulator.url, transport=stack, headers={"Authorization": "Basic t"}) as client:
        response = client.get("/api/App/Version")
        response.raise_for_status()
print("sent User-Agent:", response.request.headers["User-Agent"])
print("layer settings:", stack.layer("useragent").describe()["settings"])
assert response.request.headers["User-Agent"] == "line-3"
