"""A durable queue of report files: pending -> sending -> done | error, by atomic renames on one filesystem.

Guarantees, whatever moment the process dies (``kill -9`` included):
- a report file leaves the queue only after the server confirmed it (``done/``) or refused its
  content (``error/``, with a ``.reason.txt`` beside it);
- a report is sent with the same id every time: an id-less report gets one derived from its content
  before it is first sent, so a re-send after a crash is recognised by the server;
- a report recorded as confirmed (in ``done/``) is never sent again.
Files dropped in the folder should be written elsewhere and renamed in (a half-written file is
malformed); only ``*.json`` files are picked up.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wats.errors import RequestValidationError, WATSError

log = logging.getLogger("pywats_transport.service.queue")
STATES = ("pending", "sending", "done", "error")
REQUIRED = ("partNumber", "serialNumber", "result")
ID_NAMESPACE = uuid.UUID("6c1a3f0e-2d4b-4e58-9a57-1f0d3c2b7e11")

Submit = Callable[[dict[str, Any]], Awaitable[Any]]


class Malformed(ValueError):
    """A report file that can never be sent as it is."""


@dataclass
class QueueStats:
    confirmed: int = 0
    duplicates: int = 0
    failed_attempts: int = 0
    malformed: int = 0
    rejected: int = 0
    last_error: str | None = None
    last_success: float | None = None  # wall-clock time of the last confirmation
    recent_processing: list[float] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def report_id_for(content: bytes) -> str:
    """The id an id-less report gets: derived from its bytes, so a re-send after a crash reuses it."""
    import hashlib

    return str(uuid.uuid5(ID_NAMESPACE, hashlib.sha256(content).hexdigest()))


def parse_report(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"a report must be a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise Malformed(f"missing required field(s): {', '.join(missing)}")
    if data.get("id") is not None:
        try:
            data["id"] = str(uuid.UUID(str(data["id"])))
        except ValueError:
            raise Malformed(f"id {data['id']!r} is not a UUID") from None
    return data


class ReportQueue:
    """The queue folder and its state folders; :meth:`process_once` moves a batch of reports along."""

    def __init__(self, root: str | os.PathLike[str], submit: Submit, *, backoff_base: float = 0.5,
                 backoff_max: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.dirs = {"pending": self.root, **{s: self.root / s for s in STATES[1:]}}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.submit = submit
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.clock = clock
        self.stats = QueueStats()
        self._failures = 0  # consecutive failures to reach or satisfy the server
        self._not_before = 0.0

    # -- inspection -------------------------------------------------------------------

    def files(self, state: str) -> list[Path]:
        d = self.dirs[state]
        pattern = "*.json"
        found = [p for p in d.glob(pattern) if p.is_file() and not p.name.startswith(".")]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def depth(self) -> dict[str, int]:
        return {state: len(self.files(state)) for state in STATES}

    def oldest_waiting_age(self) -> float:
        now = time.time()
        waiting = self.files("sending") + self.files("pending")
        return max((now - p.stat().st_mtime for p in waiting), default=0.0)

    # -- one step -------------------------------------------------------------------------

    def backing_off(self) -> float:
        return max(0.0, self._not_before - self.clock())

    async def process_once(self, limit: int = 100) -> bool:
        """Send up to ``limit`` reports from one scan of the folder, oldest first.

        Returns False when there was nothing to do or the server is being waited for. One scan
        serves a whole batch, so a deep queue is not re-listed for every report.
        """
        if self.backing_off() > 0:
            return False
        # Reports that were being sent when the process stopped come first, with their recorded id.
        batch = self.files("sending")[:limit]
        batch += self.files("pending")[: limit - len(batch)]
        if not batch:
            return False
        for path in batch:
            if path.parent != self.dirs["sending"]:
                claimed = self._claim(path)
                if claimed is None:
                    continue
                path = claimed
            if not await self._send(path):
                return False  # the server failed: back off before the next report
        return True

    def _claim(self, path: Path) -> Path | None:
        """pending -> sending (atomic rename), then give an id-less report its content-derived id."""
        target = self.dirs["sending"] / path.name
        if target.exists():
            target = self.dirs["sending"] / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None  # taken by someone else
        _fsync_dir(target.parent)
        return target

    async def _send(self, path: Path) -> bool:
        started = time.perf_counter()
        try:
            content = path.read_bytes()
            report = parse_report(content)
            if report.get("id") is None:
                report["id"] = report_id_for(content)
                _write_atomic(path, json.dumps(report).encode())
        except Malformed as exc:
            self._to_error(path, str(exc))
            self.stats.malformed += 1
            return True
        except FileNotFoundError:
            return True
        try:
            result = await self.submit(report)
        except RequestValidationError as exc:  # the server will never take it as it is
            self._to_error(path, f"refused by the server: {exc}")
            self.stats.rejected += 1
            return True
        except WATSError as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        self._confirmed(path, result, time.perf_counter() - started)
        return True

    def _confirmed(self, path: Path, result: Any, seconds: float) -> None:
        target = self.dirs["done"] / path.name
        if target.exists():
            target = self.dirs["done"] / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
        os.replace(path, target)
        _fsync_dir(target.parent)
        self._failures = 0
        self._not_before = 0.0
        self.stats.confirmed += 1
        if getattr(result, "duplicate", False):
            self.stats.duplicates += 1
        self.stats.last_success = time.time()
        self.stats.recent_processing = (self.stats.recent_processing + [seconds])[-100:]
        self.on_processed(seconds, "confirmed")

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self.stats.failed_attempts += 1
        self.stats.last_error = reason
        delay = min(self.backoff_max, self.backoff_base * 2 ** (self._failures - 1))
        self._not_before = self.clock() + delay
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("report not confirmed (%s); retrying in %.1fs", reason, delay)
        self.on_processed(0.0, "failed")

    def _to_error(self, path: Path, reason: str) -> None:
        target = self.dirs["error"] / path.name
        if target.exists():
            target = self.dirs["error"] / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
        _write_atomic(target.with_name(target.name + ".reason.txt"), (reason + "\n").encode())
        os.replace(path, target)
        _fsync_dir(target.parent)
        log.warning("report %s moved to %s: %s", path.name, target, reason)
        self.on_processed(0.0, "error")

    def on_processed(self, seconds: float, outcome: str) -> None:
        """Hook for metrics; the service replaces it."""
