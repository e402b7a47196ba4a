"""An existing httpx app gets caching, retry, throttling and metrics by changing one argument."""

import asyncio

import httpx

from pywats_transport import build_async_transport
from pywats_transport.emulator import EmulatorServer
from pywats_transport.metrics import MetricsCollector


async def existing_app(client: httpx.AsyncClient) -> list[str]:
    """Code that knows nothing about pywats-transport."""
    names = []
    for pn in ("PN-1001", "PN-1002", "PN-1001", "PN-1002"):
        response = await client.get(f"/api/Product/{pn}", extensions={"route": "/api/Product/{partNumber}"})
        response.raise_for_status()
        names.append(response.json()["name"])
    return names


async def main(url: str) -> None:
    collector = MetricsCollector()
    # The WATS profile caches for a TTL whatever the server says; this server sends no freshness headers.
    transport = build_async_transport(profile="wats", metrics_collector=collector)  # the only change
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Basic t"}, transport=transport) as client:
        names = await existing_app(client)
    print(names)
    print("cache hit rate:", collector.summary()["cache"]["hit_rate"])
    assert transport.stats()["cache"]["hits"] == 2


if __name__ == "__main__":
    with EmulatorServer() as emulator:
        asyncio.run(main(emulator.url))
