"""A custom TTL for the whole client, and a shorter one for a single request."""

import asyncio

import httpx

from pywats_transport import AsyncWATS, build_async_transport
from pywats_transport.emulator import EmulatorServer


async def main(url: str) -> None:
    async with AsyncWATS(url, "my-token", cache_ttl=60, cache_max_size=500) as api:
        await api.product.get("PN-1002")
        print("cache settings:", {k: api.config.cache.model_dump()[k] for k in ("ttl", "max_size", "mode")})
        assert api.config.cache.ttl == 60

    # In any httpx app: a per-request TTL through the "cache" request extension.
    async with httpx.AsyncClient(base_url=url, transport=build_async_transport(cache_mode="ttl", cache_ttl=600),
                                 headers={"Authorization": "Basic my-token"}) as client:
        await client.get("/api/App/Processes", extensions={"cache": {"ttl": 0.2}})
        hit = await client.get("/api/App/Processes")
        await asyncio.sleep(0.3)
        expired = await client.get("/api/App/Processes")
        print("second lookup from cache:", hit.extensions["caching"]["from_cache"],
              "| after 0.3 s:", expired.extensions["caching"]["from_cache"])
        assert hit.extensions["caching"]["from_cache"] and not expired.extensions["caching"]["from_cache"]


if __name__ == "__main__":
    with EmulatorServer() as emulator:
        asyncio.run(main(emulator.url))
