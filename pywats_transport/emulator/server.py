"""Running the emulator on loopback: uvicorn in a background thread, behind a FaultProxy when drops are wanted."""

from __future__ import annotations

from typing import Any

from .._server import BackgroundServer
from .app import EmulatorState, Faults, create_app
from .proxy import FaultProxy


class EmulatorServer:
    """``with EmulatorServer(latency_ms=20, fail_rate=0.1, drop_rate=0.05) as emu: emu.url``"""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0, drop_rate: float = 0.0,
                 log_level: str = "warning", **faults: Any) -> None:
        self.state = EmulatorState(token=token, faults=Faults(**faults))
        self.app = create_app(self.state)
        self.drop_rate = drop_rate
        self._server = BackgroundServer(self.app, host, 0 if drop_rate else port, log_level=log_level)
        self.proxy = FaultProxy(self._server.port, drop_rate=drop_rate, host=host, port=port) if drop_rate else None

    @property
    def url(self) -> str:
        return self.proxy.url if self.proxy is not None else self._server.url

    def start(self) -> EmulatorServer:
        self._server.start()
        if self.proxy is not None:
            self.proxy.start()
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self._server.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
