"""Seed data for the emulator: a small factory's products, processes, assets and software."""

from __future__ import annotations

from typing import Any


def seed() -> dict[str, Any]:
    products = {}
    for i, (name, group) in enumerate(
        [("Power supply 24V", "Power"), ("Motor controller", "Drives"), ("Sensor board", "Sensors"),
         ("Display unit", "HMI"), ("Gateway", "Networking"), ("Battery pack", "Power")], start=1
    ):
        pn = f"PN-{1000 + i}"
        products[pn] = {
            "partNumber": pn,
            "name": name,
            "description": f"{name}, rev A/B",
            "productGroup": group,
            "state": "Active",
            "revisions": [{"revision": r, "state": "Released"} for r in ("A", "B")],
        }
    processes = [
        {"code": 10, "name": "SW Debug", "isTestOperation": True},
        {"code": 50, "name": "PCBA test", "isTestOperation": True},
        {"code": 100, "name": "Final function test", "isTestOperation": True},
        {"code": 500, "name": "Repair", "isTestOperation": False},
    ]
    assets = {
        f"AS-{i}": {"id": f"a{i}", "serialNumber": f"AS-{i}", "name": f"Fixture {i}", "typeName": "Test fixture",
                    "state": "InOperation", "runningCount": 10 * i, "totalCount": 100 * i}
        for i in range(1, 5)
    }
    packages = [
        {"name": "station-runtime", "version": "4.2.1", "status": "Released", "tags": ["runtime"]},
        {"name": "psu-test-sequence", "version": "1.8.0", "status": "Released", "tags": ["PN-1001"]},
        {"name": "motor-test-sequence", "version": "2.0.3", "status": "Pending", "tags": ["PN-1002"]},
    ]
    return {"products": products, "processes": processes, "assets": assets, "packages": packages}
