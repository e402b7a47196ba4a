"""Plugins found through the `pywats_transport` entry-point group, enabled by name from a JSON config file."""

import json
import tempfile
from pathlib import Path

from pywats_transport import WATS, get_plugin_manager
from pywats_transport.emulator import EmulatorServer

# 1. What is installed: built-ins and entry points (pip install ./plugins/pywats-transport-circuitbreaker).
for name, source in get_plugin_manager().layers().items():
    print(f"  {name:<18} position {source.spec.position:<4} {source.origin}")

# 2. Enabled by config: the circuit breaker, with its own settings section.
config = Path(tempfile.mkdtemp()) / "transport.json"
config.write_text(json.dumps({
    "plugins": ["circuitbreaker"],
    "plugin_settings": {"circuitbreaker": {"failure_threshold": 3, "cooldown": 10}},
    "cache": {"ttl": 60},
}))
with EmulatorServer() as emulator, WATS(emulator.url, "t", config=str(config)) as api:
    api.product.get("PN-1001")
    print("chain:", " -> ".join(api.transport.names))
    print("breaker:", api.transport.stats()["circuitbreaker"])
    assert api.transport.names == ["cache", "retry", "circuitbreaker", "throttle"]

# The same from the environment: PYWATS_TRANSPORT_PLUGINS=circuitbreaker
