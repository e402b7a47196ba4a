"""Pydantic models of WATS answers and reports. Unknown fields are kept (servers add fields over time)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: the validation context of a server's answer: models take it as the server wrote it
ANSWER = {"answer": True}


def _answer(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("answer"))


def is_iso_8601(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 date or date and time (Python < 3.11 reads no "Z" for UTC)."""
    try:
        datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return False
    return True


class WATSModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ProductRevision(WATSModel):
    revision: str
    state: str | None = None
    partNumber: str | None = None


class Product(WATSModel):
    partNumber: str
    name: str | None = None
    description: str | None = None
    productGroup: str | None = None
    state: str | None = None
    revisions: list[ProductRevision] = Field(default_factory=list)


class ProductGroup(WATSModel):
    name: str


class ReportHeader(WATSModel):
    id: str
    partNumber: str
    serialNumber: str
    revision: str | None = None
    processCode: int | None = None
    result: str | None = None
    start: str | None = None
    stationName: str | None = None


class Step(WATSModel):
    name: str
    status: Literal["P", "F", "S", "E", "T"] = "P"
    value: float | None = None
    unit: str | None = None
    lowLimit: float | None = None
    highLimit: float | None = None


class UUTReport(WATSModel):
    """A UUT test report in WSJF (WATS Standard JSON Format), trimmed to what stations commonly send.

    Made by the caller, it is checked at once, not where the server (or the outbox) would refuse it: the id
    a UUID (the server recognises a re-sent report by it), the part and serial numbers not empty. Read from
    the server's answer (:data:`ANSWER` context), it is taken as the server wrote it."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: Literal["T"] = "T"
    partNumber: str
    serialNumber: str
    revision: str = "A"
    processCode: int = 100
    result: Literal["P", "F", "E", "T"] = "P"
    stationName: str = "station-1"
    operator: str | None = None
    #: ISO 8601 text; a datetime given is written so (a naive one as local time, with its offset)
    start: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    steps: list[Step] = Field(default_factory=list)


    @field_validator("partNumber", "serialNumber")
    @classmethod
    def _named(cls, value: str, info: ValidationInfo) -> str:
        if not value and not _answer(info):
            raise ValueError("must not be empty")
        return value

    @field_validator("start", mode="before")
    @classmethod
    def _moment(cls, value: object, info: ValidationInfo) -> object:
        if _answer(info):
            return value
        if isinstance(value, datetime):
            # A naive one is the station's local time, sent with the local offset: the server must not guess.
            return (value if value.tzinfo is not None else value.astimezone()).isoformat()
        if isinstance(value, str) and not is_iso_8601(value):
            raise ValueError(f"must be a datetime or ISO 8601 text, got {value!r}")
        return value

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str, info: ValidationInfo) -> str:
        if _answer(info):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("must be a UUID, as str(uuid.uuid4()) gives (the default)") from None


class SubmitResult(WATSModel):
    id: str
    duplicate: bool = False


class Asset(WATSModel):
    serialNumber: str
    id: str | None = None
    name: str | None = None
    typeName: str | None = None
    state: str | None = None
    runningCount: int | None = None
    totalCount: int | None = None


class AssetStatus(WATSModel):
    serialNumber: str
    status: str
    runningCount: int | None = None


class Process(WATSModel):
    code: int
    name: str
    isTestOperation: bool | None = None


class AppVersion(WATSModel):
    version: str


class ProductionUnit(WATSModel):
    serialNumber: str
    partNumber: str
    revision: str | None = None
    phase: str | None = None
    testRuns: int | None = None


class SoftwarePackage(WATSModel):
    name: str
    version: str | None = None
    status: str | None = None
    tags: list[str] = Field(default_factory=list)

