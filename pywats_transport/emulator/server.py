"""Running the emulator on loopback: uvicorn in a background thread, behind a FaultProxy when drops are wanted."""

from __future__ import annotations

import threading
import time
from typing import Any

from .._server import BackgroundServer
from .app import EmulatorState, Faults, create_app
from .proxy import FaultProxy


class EmulatorServer:
    """``with EmulatorServer(latency_ms=20, fail_rate=0.1, drop_rate=0.05) as emu: emu.url``"""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0, drop_rate: float = 0.0,
                 log_level: str = "warning", **faults: Any) -> None:
        self.state = EmulatorState(token=token, faults=Faults(**faults))
        self.state.outage_hook = self._off_the_network
        self.app = create_app(self.state)
        self.drop_rate = drop_rate
        self.host, self.log_level = host, log_level
        self._server = BackgroundServer(self.app, host, 0 if drop_rate else port, log_level=log_level)
        self.proxy = FaultProxy(self._server.port, drop_rate=drop_rate, host=host, port=port) if drop_rate else None
        self._lock = threading.Lock()
        self._back_at: threading.Timer | None = None
        self._running = False

    @property
    def url(self) -> str:
        return self.proxy.url if self.proxy is not None else self._server.url

    def start(self) -> EmulatorServer:
        self._server.start()
        if self.proxy is not None:
            self.proxy.start()
        self._running = True
        return self

    def stop(self) -> None:
        with self._lock:
            self._running = False
            if self._back_at is not None:
                self._back_at.cancel()
        if self.proxy is not None:
            self.proxy.stop()
        self._server.stop()

    def outage(self, seconds: float, mode: str = "503") -> None:
        """Unavailable for ``seconds``: ``"503"`` answers 503, ``"refuse"`` leaves the network (connections
        refused, open ones reset), on the same port when it comes back. Returns at once."""
        self.state.outage(seconds, mode)

    def _off_the_network(self, seconds: float) -> None:
        if threading.current_thread() is self._server._thread:
            # Asked through the control endpoint: the server cannot stop itself from inside a request.
            threading.Thread(target=self._off_the_network, args=(seconds,), daemon=True).start()
            return
        with self._lock:
            if self._back_at is not None:  # already off: extend
                self._back_at.cancel()
            else:
                self._server.stop()
            self._back_at = threading.Timer(seconds, self._back_on_the_network)
            self._back_at.daemon = True
            self._back_at.start()

    def _back_on_the_network(self) -> None:
        with self._lock:
            self._back_at = None
            if not self._running:
                return
            self._server = BackgroundServer(self.app, self.host, self._server.port, log_level=self.log_level)
            self._server.start()

    @property
    def outage_active(self) -> bool:
        return self._back_at is not None or time.monotonic() < self.state.outage_until

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
