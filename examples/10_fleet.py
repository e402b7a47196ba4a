"""The fleet tier: stations share one cache, one invalidation and one rate through Redis.

Each station would be a process of its own, on a machine of its own; two clients stand in for them
here. Set REDIS_URL to use your Redis; otherwise a redis-server of our own is started on 127.0.0.1
(it must be on PATH: apt-get install redis-server, or brew install redis).
"""

import asyncio
import os
import shutil
import sys

from pywats_transport import AsyncWATS
from pywats_transport.emulator import EmulatorServer
from pywats_transport.fleet_demo import LocalRedis

LOOKUP = "GET /api/Product/{partNumber}"


async def main(emulator: EmulatorServer, redis_url: str) -> None:
    # The same three settings in every station's config (or PYWATS_TRANSPORT_REDIS__URL and friends).
    config = {"redis": {"url": redis_url}, "cache": {"storage": "redis"},
              "throttle": {"backend": "redis", "rate": 20, "burst": 5}}
    async with AsyncWATS(emulator.url, "my-token", config=config) as a, \
            AsyncWATS(emulator.url, "my-token", config=config) as b:
        await a.product.get("PN-1001")  # station A fetches; the answer is stored in Redis
        await b.product.get("PN-1001")  # station B is answered from Redis: no request to WATS
        print("GETs of the product at WATS after both stations looked it up:", emulator.state.requests[LOOKUP])
        product = await a.product.get("PN-1001")
        product.name = "Power supply, rev. B"
        await a.product.save(product)  # A's write drops the entry for every station before it returns
        seen_by_b = await b.product.get("PN-1001")
        print("station B after A's write:", seen_by_b.name)
        print("GETs of the product at WATS:", emulator.state.requests[LOOKUP])
        assert seen_by_b.name == "Power supply, rev. B" and emulator.state.requests[LOOKUP] == 2
        print("cache at B:", {k: v for k, v in b.transport.stats()["cache"].items() if k in ("hits", "misses")})


def redis_url_or_our_own() -> tuple[str, LocalRedis | None]:
    if url := os.environ.get("REDIS_URL"):
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("this example needs Redis: set REDIS_URL, or install redis-server (apt-get install redis-server)")
    redis = LocalRedis(binary)
    return redis.url, redis


if __name__ == "__main__":
    redis_url, ours = redis_url_or_our_own()
    try:
        with EmulatorServer() as emulator:
            asyncio.run(main(emulator, redis_url))
    finally:
        if ours is not None:
            ours.stop()
