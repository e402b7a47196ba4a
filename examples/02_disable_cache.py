"""Caching off: every lookup reaches the server."""

import asyncio

from pywats_transport import AsyncWATS
from pywats_transport.emulator import EmulatorServer


async def main(emulator: EmulatorServer) -> None:
    async with AsyncWATS(emulator.url, "my-token", enable_cache=False) as api:
        for _ in range(3):
            await api.product.get("PN-1001")
        print("chain:", api.transport.names)
    served = emulator.state.requests["GET /api/Product/{partNumber}"]
    print(f"server answered {served} product lookups")
    assert served == 3 and "cache" not in api.transport.names


if __name__ == "__main__":
    with EmulatorServer() as emu:
        asyncio.run(main(emu))
