"""Domain repositories: they build calls and hand them to ``run``; they never see a transport or a layer.

``run`` is the client's executor: it returns the parsed answer (WATS) or an
awaitable of it (AsyncWATS), so each repository is written once for both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from .calls import Call
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
    SubmitResult,
    UUTReport,
    is_iso_8601,
)

Runner = Callable[[Call[Any]], Any]


class Repository:
    def __init__(self, run: Runner) -> None:
        self._run = run


def odata_filter(**fields: Any) -> str | None:
    """``partNumber="PN-1", start_ge=datetime(...)`` -> ``partNumber eq 'PN-1' and start ge '...'``."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        name, _, op = key.partition("__")
        if isinstance(value, datetime):
            value = value.isoformat()
        text = str(value).replace("'", "''")
        parts.append(f"{name} {op or 'eq'} '{text}'")
    return " and ".join(parts) or None


def moment(name: str, value: datetime | date | str | None) -> str | None:
    """A point in time for a query as the server reads it: a datetime, a date, or ISO 8601 text (checked
    here: a server given something else answers as if it were no condition, or not at all)."""
    if value is None or isinstance(value, date):  # a datetime is a date too
        return None if value is None else value.isoformat()
    if isinstance(value, str) and is_iso_8601(value):
        return value  # sent as given
    raise ValueError(f"{name} must be a datetime, a date or an ISO 8601 text, got {value!r}")


class ProductRepository(Repository):
    def get(self, part_number: str) -> Any:
        return self._run(Call("GET", "/api/Product/{partNumber}", Product, path={"partNumber": part_number}))

    def query(self, *, part_number: str | None = None, group: str | None = None, top: int | None = None) -> Any:
        params = {"$filter": odata_filter(partNumber=part_number, productGroup=group), "$top": top}
        return self._run(Call("GET", "/api/Product/Query", list[Product], params=params))

    def save(self, product: Product) -> Any:
        """Create or update (``PUT /api/Product``)."""
        return self._run(Call("PUT", "/api/Product", Product, body=product))

    def groups(self) -> Any:
        return self._run(Call("GET", "/api/Product/Groups", list[ProductGroup]))

    def revisions(self, part_number: str) -> Any:
        return self._run(
            Call("GET", "/api/Product/{partNumber}/Revisions", list[ProductRevision], path={"partNumber": part_number})
        )


# A report changes header queries and the unit's production state.
_SUBMIT_EXTENSIONS = {"retry": {"idempotent": True}, "cache": {"invalidates": ["/api/Report", "/api/Production"]}}


class ReportRepository(Repository):
    def query_headers(self, *, part_number: str | None = None, serial_number: str | None = None,
                      date_from: datetime | date | str | None = None, date_to: datetime | date | str | None = None,
                      top: int | None = None) -> Any:
        expr = odata_filter(partNumber=part_number, serialNumber=serial_number,
                            start__ge=moment("date_from", date_from), start__le=moment("date_to", date_to))
        return self._run(Call("GET", "/api/Report/Query/Header", list[ReportHeader], params={"$filter": expr, "$top": top}))

    def submit(self, report: UUTReport | dict[str, Any]) -> Any:
        """Submit a UUT report (WSJF). Re-sending the same report id is recognised by the server, so it is
        marked idempotent and may be retried. A report given as a dict without an id gets one now, before
        the first attempt, so that a retry after a lost answer is recognised rather than stored twice."""
        if isinstance(report, dict) and not report.get("id"):
            report = {**report, "id": str(uuid.uuid4())}
        return self._run(Call("POST", "/api/Report/WSJF", SubmitResult, body=report, extensions=_SUBMIT_EXTENSIONS))

    def get(self, report_id: str) -> Any:
        return self._run(Call("GET", "/api/Report/Wsjf/{id}", UUTReport, path={"id": report_id}))


class AssetRepository(Repository):
    def get(self, id_or_serial: str) -> Any:
        return self._run(Call("GET", "/api/Asset/{idOrSerial}", Asset, path={"idOrSerial": id_or_serial}))

    def status(self, serial_number: str) -> Any:
        return self._run(Call("GET", "/api/Asset/Status", AssetStatus, params={"serialNumber": serial_number}))

    def save(self, asset: Asset) -> Any:
        return self._run(Call("PUT", "/api/Asset", Asset, body=asset))


class ProcessRepository(Repository):
    def list(self) -> Any:
        return self._run(Call("GET", "/api/App/Processes", list[Process]))


class AppRepository(Repository):
    def version(self) -> Any:
        return self._run(Call("GET", "/api/App/Version", AppVersion))

    def ping(self) -> Any:
        """The server's version, always from the server (never the cache): a reachability check."""
        return self._run(Call("GET", "/api/App/Version", AppVersion, extensions={"cache": {"bypass": True}}))


class ProductionRepository(Repository):
    def unit(self, serial_number: str, part_number: str) -> Any:
        return self._run(Call("GET", "/api/Production/Unit/{serialNumber}/{partNumber}", ProductionUnit,
                              path={"serialNumber": serial_number, "partNumber": part_number}))


class SoftwareRepository(Repository):
    def packages(self, *, tag: str | None = None) -> Any:
        return self._run(Call("GET", "/api/Software/Packages", list[SoftwarePackage], params={"tag": tag}))


REPOSITORIES: dict[str, type[Repository]] = {
    "product": ProductRepository,
    "report": ReportRepository,
    "asset": AssetRepository,
    "process": ProcessRepository,
    "app": AppRepository,
    "production": ProductionRepository,
    "software": SoftwareRepository,
}
