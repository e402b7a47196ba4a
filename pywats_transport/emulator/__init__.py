"""An embedded WATS REST emulator (starlette, served by uvicorn on 127.0.0.1) with fault injection."""

from .app import EmulatorState, Faults, create_app
from .proxy import FaultProxy
from .server import EmulatorServer

__all__ = ["create_app", "EmulatorState", "Faults", "FaultProxy", "EmulatorServer"]
