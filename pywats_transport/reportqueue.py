"""The durable report queue (client service and the WATS clients' outbox): pending -> sending -> done | error, by atomic renames on one filesystem.

Guarantees, whatever moment the process dies (``kill -9`` included):
- a report file leaves the queue only after the server confirmed it (``done/``) or refused its
  content (``error/``, with a ``.reason.txt`` beside it);
- a report is sent with the same id every time: an id-less report gets one derived from its content
  before it is first sent, so a re-send after a crash is recognised by the server;
- a report recorded as confirmed (in ``done/``) is never sent again; it is deleted from there ``keep_done``
  seconds after its confirmation (None: kept for good), so that years of confirmed reports do not fill the
  station's disk. ``error/`` is never emptied: what is there waits for a person.
Files dropped in the folder are best written elsewhere and renamed in; one that does not parse is read
again on later scans until it has stayed unchanged (size and time) for ``write_grace`` seconds of this
process's clock (it may still be being written in place: a folder on a share whose clock is off is no
different), and goes to ``error/`` only then. Only ``*.json`` files (any case: ``.JSON`` too) are
picked up, and links are never followed. Processes may share a folder: the one sending a report holds a
:class:`~pywats_transport.report_claim.Claim` on it, and the others pass it by.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .errors import StartupError
from .report_claim import Claim
from .wats.errors import RequestValidationError, WATSError

log = logging.getLogger("pywats_transport.queue")
STATES = ("pending", "sending", "done", "error")
REQUIRED = ("partNumber", "serialNumber", "result")
ID_NAMESPACE = uuid.UUID("6c1a3f0e-2d4b-4e58-9a57-1f0d3c2b7e11")

Submit = Callable[[dict[str, Any]], Awaitable[Any]]


#: how long a confirmed report stays in done/ by default: 30 days
KEEP_DONE = 30 * 86400.0
#: seconds between sweeps of done/
SWEEP_EVERY = 3600.0
#: unparsable files followed at once (a bound: more are rare, and only restart their grace)
MAX_UNPARSABLE = 1024

FOLDER_PROBLEM = "folder"
#: the key of one file's problem: this and its name
FILE_PROBLEM = "file:"
# What became of a report handed to the sender.
CONFIRMED, REJECTED, FAILED, KEPT, GONE = "confirmed", "rejected", "failed", "kept", "gone"
#: being sent by another process sharing the folder
BUSY = "busy"
#: confirmed by the server before this hand-over (the same report id was sent earlier)
ALREADY = "already confirmed"


class QueueFolderError(StartupError):
    """``queue_dir`` cannot serve as the queue (a file, under a missing folder, not writable)."""

    exit_code = 3


class Malformed(ValueError):
    """A report file that can never be sent as it is."""


@dataclass
class QueueStats:
    confirmed: int = 0
    duplicates: int = 0
    failed_attempts: int = 0
    malformed: int = 0
    rejected: int = 0
    done_deleted: int = 0  # confirmed reports deleted from done/ past keep_done
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


def _write_atomic(path: Path, data: bytes, claim: Claim | None = None) -> None:
    # A temporary name of its own: two writers of one file (processes sharing a folder, a report handed
    # over twice at once) must not rename each other's temporary file away.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        if claim is not None:  # claimed before it takes the name: no other sender finds it free
            claim.extend_to(fh.fileno())
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


@dataclass
class Scan:
    """One listing of the working folders: what to send next, and what the health endpoints report."""

    batch: list[Path]
    links: list[Path]
    counts: dict[str, int]
    #: when this process first found each waiting report (its clock), and the earliest of those
    found_at: dict[str, float]
    oldest_found: float | None
    ignored: list[dict[str, str]]


def _is_report_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(".json")


class ReportQueue:
    """The queue folder and its state folders; :meth:`process_once` moves a batch of reports along.

    The health endpoints read counts kept here (updated by each scan, which runs in a worker thread,
    and by each move), never the folder itself: their cost does not grow with the queue.
    A file that cannot be moved (a full disk, a folder made read-only) is a *problem*: logged once,
    shown by the health endpoints, retried on later scans, and cleared (and logged) when it recovers;
    it never stops the other reports.
    """

    def __init__(self, root: str | os.PathLike[str], submit: Submit, *, backoff_base: float = 0.5,
                 backoff_max: float = 60.0, write_grace: float = 5.0, keep_done: float | None = KEEP_DONE,
                 clock: Callable[[], float] = time.monotonic, named: str = "queue_dir") -> None:
        #: what the caller calls the folder, in the errors about it (the service's ``queue_dir``, the
        #: WATS clients' ``outbox``)
        self.named = named
        self.root = Path(root)
        self.dirs = {"pending": self.root, **{s: self.root / s for s in STATES[1:]}}
        self._prepare_folders()
        self.submit = submit
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.write_grace = write_grace
        #: unparsable files, by name: their (size, time) when last found so, and since when (``clock``)
        self._unparsable: dict[str, tuple[tuple[int, int], float]] = {}
        if keep_done is not None and keep_done <= 0:
            raise ValueError(f"keep_done must be > 0 seconds (or None: keep every confirmed report), got {keep_done}")
        self.keep_done = keep_done
        self._sweep_at = 0.0  # monotonic time of the next sweep of done/
        self.clock = clock
        self.stats = QueueStats()
        self._failures = 0  # consecutive failures to reach or satisfy the server
        self._not_before = 0.0
        self.problems: dict[str, str] = {}
        self.last_result: Any = None
        self.last_rejection: str | None = None
        self._counts = {state: 0 for state in STATES}
        for state in ("done", "error"):
            self._counts[state] = sum(1 for e in os.scandir(self.dirs[state]) if _is_report_name(e.name))
        self._found_at: dict[str, float] = {}
        self._oldest_found: float | None = None
        self.ignored: list[dict[str, str]] = []
        #: names being sent now, and what each send came to: a second sender leaves them alone, a hand-over waits
        self._in_flight: dict[str, asyncio.Future[str]] = {}
        # Hand-overs write in worker threads: one at a time, so that the same report handed over twice
        # at once is written once (and one write does not rename the other's temporary file away).
        self._writing = threading.Lock()
        self._wake = asyncio.Event()

    def _prepare_folders(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise QueueFolderError(f"{self.named} {str(root)!r} is a file, not a folder")
        if not root.parent.is_dir():
            raise QueueFolderError(f"{self.named} {str(root)!r}: the folder above it, {str(root.parent)!r}, does not exist")
        try:
            for d in self.dirs.values():
                d.mkdir(exist_ok=True)
            probe = root / f".pywats-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise QueueFolderError(f"{self.named} {str(root)!r} is not writable: {exc.strerror or exc}") from None

    # -- inspection -------------------------------------------------------------------

    def scan(self, limit: int = 100) -> Scan:
        """List sending/ and pending/: the next batch (sending first), counts, the oldest waiting report,
        links to move aside and entries that cannot be reports. Blocking: run it in a worker thread."""
        batch: list[Path] = []
        links: list[Path] = []
        ignored: list[dict[str, str]] = []
        counts = {"done": self._counts["done"], "error": self._counts["error"]}
        now, known = self.clock(), self._found_at
        found_at: dict[str, float] = {}
        for state in ("sending", "pending"):
            found: list[tuple[float, str]] = []
            for entry in os.scandir(self.dirs[state]):
                if not _is_report_name(entry.name):
                    continue
                try:
                    if entry.is_symlink():
                        if os.path.exists(entry.path):
                            links.append(Path(entry.path))
                        else:
                            ignored.append({"name": entry.name, "problem": "a dangling symbolic link"})
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        ignored.append({"name": entry.name, "problem": "a folder or special file, not a report"})
                        continue
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
                except FileNotFoundError:
                    continue  # moved meanwhile
            found.sort()
            counts[state] = len(found)
            for _, name in found:
                found_at[name] = known.get(name, now)
            batch += [self.dirs[state] / name for _, name in found[: limit - len(batch)]]
        return Scan(batch, links, counts, found_at, min(found_at.values(), default=None), ignored)

    def depth(self) -> dict[str, int]:
        """Reports per state, as of the last scan and the moves since (no disk access)."""
        return {state: self._counts[state] for state in STATES}

    def oldest_waiting_age(self) -> float:
        """Seconds the longest-waiting report has waited since this process found it. Not by the file's time:
        a copy keeps its original's (robocopy, ``cp -p``), and a share's clock may be far off."""
        return max(0.0, self.clock() - self._oldest_found) if self._oldest_found is not None else 0.0

    # -- problems ---------------------------------------------------------------------------

    def _problem(self, key: str, message: str) -> None:
        self.stats.last_error = message
        if self.problems.get(key) != message:
            log.warning("queue problem: %s (retrying; logged once)", message)
        self.problems[key] = message

    def _recovered(self, key: str) -> None:
        message = self.problems.pop(key, None)
        if message is not None:
            log.info("queue problem recovered: %s", message)

    def _gone(self, names: list[str]) -> list[str]:
        """Those of ``names`` in neither pending/ nor sending/ (blocking)."""
        return [name for name in names if not any((self.dirs[state] / name).exists() for state in ("pending", "sending"))]

    def _os_failure(self, path: Path, exc: OSError) -> None:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            self._problem(FOLDER_PROBLEM, f"queue folder not writable ({exc.strerror}): {path.parent}")
        else:
            self._problem(FILE_PROBLEM + path.name, f"{path.name}: {exc.strerror or exc}")

    # -- one step -------------------------------------------------------------------------

    def backing_off(self) -> float:
        return max(0.0, self._not_before - self.clock())

    async def process_once(self, limit: int = 100) -> bool:
        """Scan once (in a worker thread), then send up to ``limit`` reports, oldest first.

        Returns False when there was nothing to do or the server is being waited for. One scan
        serves a whole batch, so a deep queue is not re-listed for every report.
        """
        if self.keep_done is not None and self.clock() >= self._sweep_at:
            self._sweep_at = self.clock() + SWEEP_EVERY
            deleted = await asyncio.to_thread(self._sweep_done, self.keep_done)
            self.stats.done_deleted += deleted
            self._counts["done"] = max(0, self._counts["done"] - deleted)
        scan = await asyncio.to_thread(self.scan, limit)
        files = [key.removeprefix(FILE_PROBLEM) for key in self.problems if key.startswith(FILE_PROBLEM)]
        if files:  # a file deleted, or moved on by another process, takes its problem with it
            for name in await asyncio.to_thread(self._gone, files):
                self._recovered(FILE_PROBLEM + name)
        self._counts.update(scan.counts)
        self._found_at, self._oldest_found, self.ignored = scan.found_at, scan.oldest_found, scan.ignored
        for link in scan.links:
            try:
                await self._to_error(link, "a symbolic link: the queue does not follow links; "
                                           "copy the report into the folder instead")
            except OSError as exc:
                self._os_failure(link, exc)
        if self.backing_off() > 0 or not scan.batch:
            return False
        for path in scan.batch:
            if path.name in self._in_flight:
                continue
            if await self._take_and_send(path) == FAILED:
                return False  # the server failed: back off before the next report
        return True

    async def _take_and_send(self, path: Path) -> str:
        """Claim a pending report (or resume one in sending/) and send it; returns the outcome."""
        name = path.name
        finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._in_flight[name] = finished
        outcome = KEPT
        try:
            outcome = await self._claim_and_send(path)
            return outcome
        finally:
            self._in_flight.pop(name, None)
            finished.set_result(outcome)

    async def _claim_and_send(self, path: Path) -> str:
        claim: Claim | None = None
        try:
            if path.parent != self.dirs["sending"]:
                moved = await asyncio.to_thread(self._claim, path)
                if moved is None:
                    return GONE
                self._recovered(FOLDER_PROBLEM)
                self._move_counted("pending", "sending")
                path = moved
            claim = await asyncio.to_thread(Claim.take, path)
            if claim is None:
                return BUSY
            return await self._send(path, claim)
        except OSError as exc:  # this file's problem, not the queue's: go on with the others
            if isinstance(exc, FileNotFoundError) and not await asyncio.to_thread(path.exists):
                self._recovered(FILE_PROBLEM + path.name)  # moved on by another hand (a process sharing the folder)
                return GONE
            self._os_failure(path, exc)
            return KEPT
        finally:
            if claim is not None:
                claim.release()

    # -- handing a report over (the WATS clients' outbox) ------------------------------------

    def put(self, report: dict[str, Any]) -> Path:
        """Write a report into the queue, durably (fsync), before anything is sent; returns its file.

        It gets its id now (a content-derived one when it has none), so the caller can be told which
        report it is, and a re-send after any crash is recognised by the server. Blocking: on an event
        loop, await :meth:`aput`.
        """
        path, written = self._write_new(report)
        return self._added(path, written)

    async def aput(self, report: dict[str, Any]) -> Path:
        """:meth:`put`, its disk writes in a worker thread: an fsync on a slow disk holds no event loop."""
        path, written = await asyncio.to_thread(self._write_new, report)
        return self._added(path, written)

    def _write_new(self, report: dict[str, Any]) -> tuple[Path, bool]:
        content = json.dumps(report).encode()
        data = parse_report(content)
        if data.get("id") is None:
            data["id"] = report_id_for(content)
        path = self.dirs["pending"] / f"{data['id']}.json"
        with self._writing:
            if any((self.dirs[state] / path.name).exists() for state in ("pending", "sending", "done")):
                return path, False
            _write_atomic(path, json.dumps(data).encode())
        return path, True

    def _added(self, path: Path, written: bool) -> Path:
        if written:
            self._counts["pending"] += 1
        self._wake.set()
        return path

    async def send_now(self, path: Path) -> str:
        """Try to send one report at once; ``confirmed``, ``rejected`` (moved to error/), or ``kept``
        (the server is unreachable or busy, or the queue is waiting for it: a sender will send it later)."""
        if (self.dirs["done"] / path.name).exists():
            return ALREADY
        running = self._in_flight.get(path.name)
        if running is not None:  # the sender took it up first: its send is this hand-over's
            outcome = await asyncio.shield(running)
        elif self.backing_off() > 0:
            return KEPT
        else:
            if not path.exists():
                path = self.dirs["sending"] / path.name
                if not path.exists():
                    return ALREADY if (self.dirs["done"] / path.name).exists() else KEPT
            outcome = await self._take_and_send(path)
        if outcome == GONE and (self.dirs["done"] / path.name).exists():
            return ALREADY  # confirmed by another process sharing the folder
        return KEPT if outcome in (FAILED, GONE, BUSY) else outcome

    def wake(self) -> None:
        """Have the sender scan now rather than at its next poll."""
        self._wake.set()

    def waiting(self) -> int:
        """Reports not yet confirmed or refused (pending and sending), as last counted: a scan that ran
        while reports arrived may lag behind by those until the next scan."""
        return self._counts["pending"] + self._counts["sending"]

    def count_waiting(self) -> int:
        """Reports not yet confirmed or refused, counted on disk now (blocking: lists two folders)."""
        return sum(1 for state in ("pending", "sending") for e in os.scandir(self.dirs[state])
                   if _is_report_name(e.name) and e.is_file(follow_symlinks=False))

    async def run(self, stopping: asyncio.Event, poll_interval: float) -> None:
        """Send until ``stopping`` is set: scan, send a batch, wait a poll interval (or the backoff)."""
        while not stopping.is_set():
            try:
                busy = await self.process_once()
            except Exception as exc:  # a bug (or an unlisted folder failure) must not stop the queue for good
                log.error("queue step failed (%s: %s); retrying", type(exc).__name__, exc)
                busy = False
            if busy:
                continue
            wait = max(poll_interval, min(self.backing_off(), poll_interval * 4))
            self._wake.clear()
            waiters = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    # The steps below that touch the disk (renames, fsyncs) run in a worker thread; the counts, the
    # problems and the stats change on the event loop, after them.

    def _claim(self, path: Path) -> Path | None:
        """pending -> sending (atomic rename); None: taken by someone else. Sending it needs a
        :class:`Claim` on the moved file too: another process may find it in sending/ first."""
        target = self.dirs["sending"] / path.name
        if target.exists():
            target = self.dirs["sending"] / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        _fsync_dir(target.parent)
        return target

    @staticmethod
    def _load(path: Path, claim: Claim) -> dict[str, Any]:
        """The report in ``path``, an id-less one given its content-derived id (written back first)."""
        content = path.read_bytes()
        report = parse_report(content)
        if report.get("id") is None:
            report["id"] = report_id_for(content)
            _write_atomic(path, json.dumps(report).encode(), claim)
        return report

    def _being_written(self, path: Path) -> bool:
        """Whether an unparsable file may still be being written in place: it changed (size or time) since
        it was last found so, or has not stayed unchanged for ``write_grace`` seconds since. Timed by this
        process's clock, never by the file's time, which a share's clock sets."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        seen, now = (stat.st_size, stat.st_mtime_ns), self.clock()
        last = self._unparsable.get(path.name)
        if last is None or last[0] != seen:
            if len(self._unparsable) >= MAX_UNPARSABLE:
                self._unparsable.clear()  # files gone meanwhile: their grace starts again, no more
            self._unparsable[path.name] = (seen, now)
            return self.write_grace > 0
        if now - last[1] < self.write_grace:
            return True
        del self._unparsable[path.name]
        return False

    @staticmethod
    def _move(path: Path, folder: Path, reason: str | None = None, *, stamp: bool = False) -> Path:
        """``path`` into ``folder`` under its name (or a new one, when taken), with its reason beside it;
        ``stamp``: its modification time made now (done/ is swept by the time of confirmation, not of writing)."""
        target = folder / path.name
        if target.exists() or target.is_symlink():
            target = folder / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
        if reason is not None:
            _write_atomic(target.with_name(target.name + ".reason.txt"), (reason + "\n").encode())
        if stamp:
            os.utime(path)
        os.replace(path, target)
        _fsync_dir(folder)
        return target

    def _sweep_done(self, keep: float) -> int:
        """Delete the reports confirmed more than ``keep`` seconds ago from done/; returns how many."""
        before = time.time() - keep
        deleted = 0
        try:
            entries = list(os.scandir(self.dirs["done"]))
        except OSError:
            return 0
        for entry in entries:
            try:
                if (_is_report_name(entry.name) and entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < before):
                    os.unlink(entry.path)
                    deleted += 1
            except OSError:  # gone meanwhile, or not ours to delete: kept, tried again at the next sweep
                continue
        return deleted

    def _move_counted(self, source: str, target: str) -> None:
        self._counts[source] = max(0, self._counts[source] - 1)
        self._counts[target] += 1

    async def _send(self, path: Path, claim: Claim) -> str:
        started = time.perf_counter()
        try:
            report = await asyncio.to_thread(self._load, path, claim)
        except Malformed as exc:
            if await asyncio.to_thread(self._being_written, path):
                return KEPT  # read again on a later scan, from sending/ (a writer's open file moved with it)
            await self._to_error(path, str(exc))
            self.stats.malformed += 1
            return REJECTED
        except FileNotFoundError:
            return GONE
        self._unparsable.pop(path.name, None)  # it was being written, and is whole now
        try:
            result = await self.submit(report)
        except RequestValidationError as exc:  # the server will never take it as it is
            await self._to_error(path, f"refused by the server: {exc}")
            self.stats.rejected += 1
            self.last_rejection = str(exc)
            return REJECTED
        except WATSError as exc:
            self._failed(str(exc))
            return FAILED
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return FAILED
        await asyncio.to_thread(partial(self._move, path, self.dirs["done"], stamp=True))
        self._confirmed(path, result, time.perf_counter() - started)
        self.last_result = result
        return CONFIRMED

    def _confirmed(self, path: Path, result: Any, seconds: float) -> None:
        self._recovered(FILE_PROBLEM + path.name)
        self._move_counted("sending", "done")
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

    async def _to_error(self, path: Path, reason: str) -> None:
        target = await asyncio.to_thread(self._move, path, self.dirs["error"], reason)
        self._recovered(FILE_PROBLEM + path.name)
        self._move_counted("sending" if path.parent == self.dirs["sending"] else "pending", "error")
        log.warning("report %s moved to %s: %s", path.name, target, reason)
        self.on_processed(0.0, "error")

    def on_processed(self, seconds: float, outcome: str) -> None:
        """Hook for metrics; the service replaces it."""
