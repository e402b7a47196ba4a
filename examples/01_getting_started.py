"""Getting started: AsyncWATS with its default stack (caching on) against the embedded emulator."""

import asyncio

from pywats_transport import AsyncWATS
from pywats_transport.emulator import EmulatorServer


async def main(url: str) -> None:
    # Only base_url and token: caching, retry and throttling come with the default stack.
    async with AsyncWATS(url, "my-token") as api:
        product = await api.product.get("PN-1001")
        again = await api.product.get("PN-1001")  # served from the cache
        processes = await api.process.list()
        print(f"{product.partNumber}: {product.name}; {len(processes)} processes")
        print("chain:", " -> ".join(item["name"] for item in api.transport.describe()))
        cache = api.transport.stats()["cache"]
        print(f"cache: {cache['hits']} hit(s), {cache['misses']} miss(es)")
        assert again == product and cache["hits"] == 1


if __name__ == "__main__":
    with EmulatorServer(latency_ms=20) as emulator:
        asyncio.run(main(emulator.url))
