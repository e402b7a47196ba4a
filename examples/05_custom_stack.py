"""Composing a stack in code: pick the layers, their settings and the innermost transport."""

import httpx

from pywats_transport import TransportStack
from pywats_transport.emulator import EmulatorServer
from pywats_transport.layers.cache import CacheLayer
from pywats_transport.layers.retry import RetryLayer
from pywats_transport.layers.throttle import ThrottleLayer

with EmulatorServer(fail_rate=0.3, seed=4) as emulator:
    stack = TransportStack(
        [CacheLayer(mode="ttl", ttl=120), RetryLayer(max_attempts=6, backoff_base=0.01), ThrottleLayer(rate=50, burst=10)],
        inner=httpx.HTTPTransport(),
    )
    with httpx.Client(base_url=emulator.url, transport=stack, headers={"Authorization": "Basic t"}) as client:
        for pn in ("PN-1001", "PN-1002", "PN-1001"):
            client.get(f"/api/Product/{pn}").raise_for_status()
    for layer in stack.describe():
        print(f"{layer['name']:<10} {layer['settings']}")
    stats = stack.stats()
    print("retries:", stats["retry"]["retries_by_reason"], "| cache hits:", stats["cache"]["hits"])
    assert stats["cache"]["hits"] == 1
