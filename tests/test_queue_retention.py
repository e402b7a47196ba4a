"""done/ does not grow for good: a station sending a thousand reports a day filled its disk with
confirmed reports WATS already holds, and then the queue could write nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pywats_transport import ConfigError
from pywats_transport.reportqueue import ReportQueue
from pywats_transport.service import AsyncClientService, ClientConfig

DAY = 86400.0


def aged(path: Path, days: float, text: str = "{}") -> Path:
    path.write_text(text)
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def report(sn: str) -> str:
    return json.dumps({"partNumber": "PN-1", "serialNumber": sn, "result": "P"})


@pytest.mark.anyio
async def test_confirmed_reports_are_deleted_after_the_retention_counted_from_confirmation(tmp_path: Path) -> None:
    sent: list[str] = []

    async def submit(data: dict[str, Any]) -> None:
        sent.append(data["serialNumber"])

    now = [0.0]
    dirs = ReportQueue(tmp_path / "q", submit).dirs  # the folders of a station that has run for a while
    old = aged(dirs["done"] / "old.json", 11)
    recent = aged(dirs["done"] / "recent.json", 9)
    note = aged(dirs["done"] / "notes.txt", 400)  # not a report: not ours to delete
    refused = aged(dirs["error"] / "bad.json", 400)  # waits for a person, however old
    aged(dirs["pending"] / "late.json", 40, report("SN-LATE"))  # written long ago, confirmed now
    queue = ReportQueue(tmp_path / "q", submit, keep_done=10 * DAY, clock=lambda: now[0])
    assert await queue.process_once()
    assert sent == ["SN-LATE"]
    assert not old.exists() and recent.exists() and note.exists() and refused.exists()
    assert (queue.dirs["done"] / "late.json").exists() and queue.stats.done_deleted == 1
    assert queue.depth()["done"] == 2

    aged(recent, 11)  # due now, but done/ is swept once an hour
    now[0] += 60
    await queue.process_once()
    assert recent.exists()
    now[0] += 3600
    await queue.process_once()
    assert not recent.exists() and queue.stats.done_deleted == 2 and queue.depth()["done"] == 1


@pytest.mark.anyio
async def test_none_keeps_every_confirmed_report(tmp_path: Path) -> None:
    async def submit(data: dict[str, Any]) -> None:
        return None

    queue = ReportQueue(tmp_path / "q", submit, keep_done=None)
    old = aged(queue.dirs["done"] / "old.json", 4000)
    await queue.process_once()
    assert old.exists() and queue.stats.done_deleted == 0
    with pytest.raises(ValueError, match=r"keep_done must be > 0 seconds \(or None: keep every confirmed report\), got 0"):
        ReportQueue(tmp_path / "q", submit, keep_done=0)


@pytest.mark.anyio
async def test_the_service_keeps_done_reports_for_done_retention_days(tmp_path: Path) -> None:
    base = dict(service_address="http://127.0.0.1:9", api_token="t", queue_dir=str(tmp_path / "queue"),
                health_port=0, metrics_port=None)
    assert ClientConfig(**base).done_retention_days == 30
    with pytest.raises(ConfigError, match="done_retention_days = 0: Input should be greater than 0"):
        ClientConfig(**base, done_retention_days=0)
    for days, kept in ((2.0, 2 * DAY), (None, None)):
        async with AsyncClientService(ClientConfig(**base, done_retention_days=days)) as service:
            assert service.queue is not None and service.queue.keep_done == kept
