"""The WATS client: AsyncWATS / WATS, their repositories, models and errors."""

from .client import WATS, AsyncWATS
from .errors import (
    NotFoundError,
    RequestValidationError,
    ServerError,
    UnauthorizedError,
    WATSConnectionError,
    WATSError,
)
from .models import (
    AppVersion,
    Asset,
    AssetStatus,
    Process,
    Product,
    ProductGroup,
    ProductionUnit,
    ProductRevision,
    ReportHeader,
    SoftwarePackage,
    Step,
    SubmitResult,
    UUTReport,
)

__all__ = [
    "AsyncWATS", "WATS", "WATSError", "NotFoundError", "UnauthorizedError", "RequestValidationError", "ServerError",
    "WATSConnectionError", "Product", "ProductRevision", "ProductGroup", "ReportHeader", "UUTReport", "Step",
    "SubmitResult", "Asset", "AssetStatus", "Process", "AppVersion", "ProductionUnit", "SoftwarePackage",
]
