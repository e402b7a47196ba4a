"""The client service: ClientConfig, a durable pending queue of reports, and a health server."""

from .config import ClientConfig
from .queue import ReportQueue
from .service import AsyncClientService

__all__ = ["ClientConfig", "ReportQueue", "AsyncClientService"]
