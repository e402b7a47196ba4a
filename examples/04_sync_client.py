"""The sync WATS client: same flags, same repositories, no event loop."""

from pywats_transport import WATS
from pywats_transport.emulator import EmulatorServer
from pywats_transport.wats import Product, UUTReport

with EmulatorServer() as emulator, WATS(emulator.url, "my-token") as api:
    print("server version:", api.app.version().version)
    product = api.product.get("PN-1003")
    api.product.save(Product(partNumber="PN-1003", name="Sensor board v2"))  # invalidates /api/Product/...
    renamed = api.product.get("PN-1003")
    result = api.report.submit(UUTReport(partNumber="PN-1003", serialNumber="SN-0001"))
    print(f"{product.name!r} -> {renamed.name!r}; report {result.id} stored")
    assert renamed.name == "Sensor board v2" and api.transport.stats()["cache"]["invalidations"] >= 1
