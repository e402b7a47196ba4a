from __future__ import annotations

import json

import httpx
import pytest

from pywats_transport import (
    AsyncLayer,
    AsyncTransportStack,
    Layer,
    TransportStack,
    build_async_transport,
    build_transport,
)


class Recorder(Layer):
    def __init__(self, name: str, log: list[str], inner: httpx.BaseTransport | None = None) -> None:
        super().__init__(inner)
        self.name = name  # type: ignore[misc]
        self.log = log
        self.closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append(self.name)
        return self.inner.handle_request(request)

    def close_layer(self) -> None:
        self.closed += 1


class AsyncRecorder(AsyncLayer):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self.log = log
        self.closed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append(self.name)
        return await self.inner.handle_async_request(request)

    async def aclose_layer(self) -> None:
        self.closed += 1


class CountingTransport(httpx.MockTransport):
    def __init__(self) -> None:
        super().__init__(lambda r: httpx.Response(200, json={"path": r.url.path}))
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def test_sync_stack_runs_layers_outermost_first_and_closes_each_once() -> None:
    log: list[str] = []
    inner = CountingTransport()
    a, b = Recorder("a", log), Recorder("b", log)
    stack = TransportStack([a, b], inner)
    with httpx.Client(transport=stack) as client:
        assert client.get("http://test/x").json() == {"path": "/x"}
    stack.close()
    stack.close()
    assert log == ["a", "b"]
    assert (a.closed, b.closed, inner.closed) == (1, 1, 1)
    assert [d["name"] for d in stack.describe()] == ["a", "b", "transport"]


@pytest.mark.anyio
async def test_async_stack_runs_layers_outermost_first_and_closes_each_once() -> None:
    log: list[str] = []
    inner = CountingTransport()
    a, b = AsyncRecorder("a", log), AsyncRecorder("b", log)
    async with AsyncTransportStack([a, b], inner) as stack:
        async with httpx.AsyncClient(transport=stack) as client:
            assert (await client.get("http://test/y")).json() == {"path": "/y"}
    await stack.aclose()
    assert log == ["a", "b"]
    assert (a.closed, b.closed, inner.closed) == (1, 1, 1)


def test_stack_rejects_wrong_kind_and_rebinding() -> None:
    with pytest.raises(TypeError, match="sync stack takes sync layers"):
        TransportStack([AsyncRecorder("x", [])], CountingTransport())  # type: ignore[list-item]
    layer = Recorder("x", [])
    TransportStack([layer], CountingTransport())
    with pytest.raises(ValueError, match="already wraps"):
        TransportStack([layer], CountingTransport())
    with pytest.raises(ValueError, match="repeated: x"):
        TransportStack([Recorder("x", []), Recorder("x", [])], CountingTransport())


def test_unbound_layer_says_so() -> None:
    with pytest.raises(RuntimeError, match="not bound"):
        Recorder("lonely", []).handle_request(httpx.Request("GET", "http://t/"))


def test_built_stack_default_order_describe_and_stats_are_json() -> None:
    stack = build_transport(inner=CountingTransport(), profile="wats")
    assert stack.names == ["cache", "retry", "throttle"]  # metrics is opt-in
    with httpx.Client(transport=stack) as client:
        client.get("http://test/a")
    described = json.loads(json.dumps(stack.describe()))
    assert described[0]["name"] == "cache" and described[0]["settings"]["ttl"] == 300.0
    assert set(json.loads(json.dumps(stack.stats()))) == {"cache", "retry", "throttle"}


def test_flags_switch_layers() -> None:
    stack = build_transport(inner=CountingTransport(), enable_cache=False, metrics=True, retry_max_attempts=5,
                            throttle=True)
    assert stack.names == ["metrics", "retry", "throttle"]
    assert stack.layer("retry").describe()["settings"]["max_attempts"] == 5
    with pytest.raises(KeyError, match="no layer named 'cache'.*metrics, retry, throttle"):
        stack.layer("cache")
    stack.close()


@pytest.mark.anyio
async def test_existing_async_app_takes_the_stack_unchanged() -> None:
    app_log: list[str] = []

    async def existing_app(client: httpx.AsyncClient) -> str:
        response = await client.get("/items/1", headers={"Accept": "application/json"})
        response.raise_for_status()
        app_log.append(response.json()["path"])
        return str(response.json()["path"])

    inner = CountingTransport()
    async with httpx.AsyncClient(base_url="http://test", transport=build_async_transport(inner=inner)) as client:
        assert await existing_app(client) == "/items/1"
    assert inner.closed == 1


def test_default_inner_transport_is_httpx() -> None:
    stack = build_transport(enable_cache=False)
    assert isinstance(stack.inner, httpx.HTTPTransport)
    stack.close()
