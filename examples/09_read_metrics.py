"""The client service's /metrics: Prometheus text by default, a JSON summary on request."""

import asyncio
import json
import os
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pywats_transport.emulator import EmulatorServer
from pywats_transport.service import AsyncClientService, ClientConfig


async def main(url: str) -> None:
    queue = Path(tempfile.mkdtemp()) / "queue"
    config = ClientConfig(service_address=url, api_token="t", queue_dir=str(queue), health_port=0, metrics_port=None,
                          poll_interval=0.05)
    async with AsyncClientService(config) as service:
        report = {"partNumber": "PN-1001", "serialNumber": "SN-42", "result": "P"}
        (queue / ".r.tmp").write_text(json.dumps(report))
        os.replace(queue / ".r.tmp", queue / "r.json")  # written elsewhere, renamed in
        while not list((queue / "done").glob("*.json")):
            await asyncio.sleep(0.05)
        await service.api.product.get("PN-1001")
        await service.api.product.get("PN-1001")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            text = (await client.get("/metrics")).text
            summary = (await client.get("/metrics", params={"format": "json"})).json()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("http_client_request_duration", "pywats_transport_cache_lookups",
                                   "pywats_transport_queue_depth")):
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    print(f"  {sample.name}{sample.labels} = {sample.value}")
    print("summary:", json.dumps({"requests": summary["requests"]["total"], "cache": summary["cache"]["hit_rate"],
                                  "queue": summary["queue"]}))
    assert summary["queue"]["done"] == 1


if __name__ == "__main__":
    with EmulatorServer() as emulator:
        asyncio.run(main(emulator.url))
