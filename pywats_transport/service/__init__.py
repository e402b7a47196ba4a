"""The client service: ClientConfig, a durable pending queue of reports, and a health server."""

from ..reportqueue import ReportQueue
from .config import ClientConfig
from .service import AsyncClientService

__all__ = ["ClientConfig", "ReportQueue", "AsyncClientService"]
