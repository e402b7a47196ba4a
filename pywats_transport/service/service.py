"""AsyncClientService: AsyncWATS, the metrics collector, the report queue and the health server, as one unit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from .._version import __version__
from ..config import redacted
from ..metrics import MetricsCollector
from ..reportqueue import STATES, ReportQueue
from ..wats import AsyncWATS
from . import logs
from .config import ClientConfig
from .health import create_health_app
from .server import LISTEN_BACKLOG, BindError, bind, connection_budget, protocol_class

log = logging.getLogger("pywats_transport.service")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the service, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsyncClientService:
    def __init__(self, config: ClientConfig, *, transport: Any = None) -> None:
        self.config = config
        self._transport = transport  # replaces the network transport (tests)
        self.collector: MetricsCollector | None = None
        self.api: AsyncWATS | None = None
        self.queue: ReportQueue | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._servers: list[_EmbeddedServer] = []
        self._started_at: float | None = None
        self._stopping = asyncio.Event()
        self.last_contact: float | None = None  # monotonic time of the last successful server answer
        self.last_contact_error: str | None = None
        self.server_version: str | None = None
        self.health_port: int | None = None
        self.metrics_port: int | None = None
        self._remove_log_filter: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> AsyncClientService:
        cfg = self.config
        if cfg.enable_metrics:
            self.collector = MetricsCollector()
        verify = cfg.verify_ssl if self._transport is None else True  # else the given transport's own check
        self.api = AsyncWATS(cfg.service_address, cfg.api_token.get_secret_value(), verify_ssl=verify,
                             metrics_collector=self.collector,
                             transport=self._transport, config=cfg.transport or None, **cfg.transport_flags())
        self.queue = ReportQueue(cfg.queue_dir, self._submit, backoff_max=cfg.retry_backoff_max,
                                 write_grace=cfg.write_grace_seconds,
                                 keep_done=None if cfg.done_retention_days is None else cfg.done_retention_days * 86400)
        if self.collector is not None:
            self.queue.on_processed = self.collector.record_queue_processing  # type: ignore[method-assign]
            self.collector.observe_gauge("pywats_transport.queue.depth", self._depth_gauge, unit="{report}",
                                         description="Reports in the queue folder by state.")
        self._started_at = time.monotonic()
        self._remove_log_filter = logs.install()
        self.health_port = await self._serve(cfg.health_host, cfg.health_port, "health_port", metrics_only=False)
        if cfg.enable_metrics and cfg.metrics_port is not None and (cfg.metrics_port == 0 or cfg.metrics_port != cfg.health_port):
            self.metrics_port = await self._serve(cfg.health_host, cfg.metrics_port, "metrics_port", metrics_only=True)
        self._tasks += [asyncio.create_task(self._run_queue(), name="pywats-queue"),
                        asyncio.create_task(self._run_pings(), name="pywats-ping")]
        cfg.warn_if_others_read_the_token()
        log.info("client service started: health on http://%s:%s, queue %s", cfg.health_host, self.health_port,
                 cfg.queue_dir)
        return self

    async def _serve(self, host: str, port: int, port_field: str, *, metrics_only: bool) -> int:
        cfg = self.config
        sock = bind(host, port, host_field="health_host", port_field=port_field)
        app = create_health_app(self, metrics_only=metrics_only)
        max_connections, accept_burst = connection_budget(cfg.health_max_connections)
        server = _EmbeddedServer(uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, proxy_headers=False, backlog=accept_burst,
            http=protocol_class(cfg.health_header_timeout, max_connections, parser=cfg.health_parser),
            timeout_keep_alive=int(max(1, round(cfg.health_keepalive_timeout))),
        ))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="pywats-health")
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise BindError(f"the server on {host}:{port} ({port_field}) stopped while starting")
            await asyncio.sleep(0.01)
        # asyncio listens with the same number it uses as the accept burst; waiting connections
        # cost no descriptor until accepted, so the kernel queue is made long again.
        sock.listen(LISTEN_BACKLOG)
        self._servers.append(server)
        self._tasks.append(task)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.should_exit = True
        for task in self._tasks:
            if task.get_name() != "pywats-health":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.collector is not None:
            self.collector.forget_gauge("pywats_transport.queue.depth", self._depth_gauge)
        if self.api is not None:
            await self.api.aclose()
        if self._remove_log_filter is not None:
            self._remove_log_filter()
            self._remove_log_filter = None

    async def __aenter__(self) -> AsyncClientService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self, on_started: Callable[[AsyncClientService], None] | None = None) -> None:
        """Start, then stop cleanly on SIGINT or SIGTERM; ``on_started`` sees the service once it listens.

        Meant to own the process (``pywats-transport serve``): once started it freezes the objects
        allocated so far out of full garbage collections (``gc.freeze()``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        # This process is the service's own: what start-up allocated (modules, config, the OTel
        # pipeline) lives as long as it does. Frozen, a full collection no longer walks it, which
        # took 25-45 ms and stalled every health probe in flight (as `gc.freeze` is meant for).
        gc.freeze()
        if on_started is not None:
            on_started(self)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    # -- work -------------------------------------------------------------------------

    async def _submit(self, report: dict[str, Any]) -> Any:
        assert self.api is not None
        result = await self.api.report.submit(report)
        self._contact_ok()
        return result

    def _contact_ok(self) -> None:
        self.last_contact = time.monotonic()
        self.last_contact_error = None

    async def _run_queue(self) -> None:
        assert self.queue is not None
        await self.queue.run(self._stopping, self.config.poll_interval)

    async def _run_pings(self) -> None:
        assert self.api is not None
        while not self._stopping.is_set():
            try:
                version = await self.api.app.ping()
                self.server_version = version.version
                self._contact_ok()
            except Exception as exc:
                self.last_contact_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.config.ping_interval)

    # -- health -----------------------------------------------------------------------

    def uptime(self) -> float:
        return time.monotonic() - self._started_at if self._started_at is not None else 0.0

    def _depth_gauge(self) -> dict[tuple[tuple[str, str], ...], int]:
        if self.queue is None:
            return {}
        return {(("state", state),): n for state, n in self.queue.depth().items()}

    def problems(self, *, readiness: bool) -> list[str]:
        out = []
        if self._stopping.is_set():
            out.append("service is stopping")
        if self.queue is not None:
            if self.queue.oldest_waiting_age() > self.config.stuck_after:
                out.append(f"queue stuck: a report has waited over {self.config.stuck_after:.0f}s")
            out += [f"queue: {message}" for message in self.queue.problems.values()]
        if readiness:
            if self.last_contact is None:
                out.append("WATS not reached yet" + (f" ({self.last_contact_error})" if self.last_contact_error else ""))
            elif time.monotonic() - self.last_contact > self.config.ready_max_age:
                out.append(f"WATS not reached for {time.monotonic() - self.last_contact:.0f}s")
        return out

    @staticmethod
    def degraded(stats: dict[str, Any]) -> list[str]:
        """What runs at reduced service, failing nothing: the fleet tier while its Redis is down."""
        out = []
        down = (stats.get("cache") or {}).get("redis_down_seconds")
        if down:
            out.append(f"Redis unavailable for the cache for {down:.1f}s: lookups go to WATS")
        down = ((stats.get("throttle") or {}).get("fleet") or {}).get("redis_down_seconds")
        if down:
            out.append(f"Redis unavailable for the fleet rate for {down:.1f}s: this process takes its share of the rate")
        return out

    def details(self) -> dict[str, Any]:
        stats = self.api.transport.stats() if self.api is not None else {}
        q = self.queue
        return {
            "version": __version__,
            "uptime_seconds": round(self.uptime(), 3),
            "api": {
                "url": redacted(self.config.service_address),  # a password in the URL is not shown
                "server_version": self.server_version,
                "reachable": self.last_contact is not None and not self.last_contact_error,
                "last_contact_age_seconds": round(time.monotonic() - self.last_contact, 3) if self.last_contact else None,
                "last_error": self.last_contact_error,
            },
            "transport": [{"name": d["name"], "settings": d["settings"]} for d in self.api.transport.describe()]
            if self.api is not None else [],
            "cache": stats.get("cache"),
            "retry": stats.get("retry"),
            "throttle": stats.get("throttle"),
            "queue": {
                "folder": os.path.abspath(self.config.queue_dir),
                "depth": q.depth() if q else {s: 0 for s in STATES},
                "confirmed": q.stats.confirmed if q else 0,
                "duplicates": q.stats.duplicates if q else 0,
                "failed_attempts": q.stats.failed_attempts if q else 0,
                "malformed": q.stats.malformed if q else 0,
                "rejected": q.stats.rejected if q else 0,
                "done_deleted": q.stats.done_deleted if q else 0,
                "last_error": q.stats.last_error if q else None,
                "oldest_waiting_seconds": round(q.oldest_waiting_age(), 3) if q else 0.0,
                "problems": list(q.problems.values()) if q else [],
                "ignored": list(q.ignored) if q else [],
            },
            "health": {"problems": self.problems(readiness=True), "degraded": self.degraded(stats)},
        }
