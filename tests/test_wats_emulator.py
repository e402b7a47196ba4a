from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pywats_transport import WATS, AsyncWATS
from pywats_transport.emulator import EmulatorServer
from pywats_transport.wats import NotFoundError, Product, UnauthorizedError, UUTReport

TOKEN = "station-token"
# 12 attempts: at about 28 % faults per attempt, 8 failed in a row about once in 25,000 calls, which
# over the ~260 calls of a run failed the test now and then for no fault of the product.
RETRY = {"max_attempts": 12, "backoff_base": 0.005, "backoff_max": 0.05, "budget_ratio": 1.0}


@pytest.fixture
def faulty() -> Iterator[EmulatorServer]:
    with EmulatorServer(token=TOKEN, fail_rate=0.2, drop_rate=0.1, seed=7) as emu:
        yield emu


@pytest.fixture
def clean() -> Iterator[EmulatorServer]:
    with EmulatorServer(token=TOKEN) as emu:
        yield emu


class Both:
    """One body of test for WATS and AsyncWATS."""

    def __init__(self, mode: str, url: str, **kw: Any) -> None:
        self.mode = mode
        self.api: Any = (WATS if mode == "sync" else AsyncWATS)(url, TOKEN, **kw)

    async def __call__(self, repo: str, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(getattr(self.api, repo), method)(*args, **kwargs)
        return result if self.mode == "sync" else await result

    async def close(self) -> None:
        if self.mode == "sync":
            self.api.close()
        else:
            await self.api.aclose()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_idempotent_calls_succeed_through_faults_and_reports_land_once(mode: str, faulty: EmulatorServer) -> None:
    api = Both(mode, faulty.url, enable_cache=False, enable_throttling=False, retry=RETRY)
    for i in range(30):
        assert (await api("product", "get", f"PN-100{1 + i % 6}")).partNumber.startswith("PN-100")
        assert len(await api("process", "list")) == 4
        await api("production", "unit", f"SN-{i}", "PN-1001")
    reports = [UUTReport(partNumber="PN-1001", serialNumber=f"SN-{i}") for i in range(20)]
    for report in reports:
        assert (await api("report", "submit", report)).id == report.id
    await api.close()
    st = faulty.state
    assert sorted(st.reports) == sorted(r.id for r in reports)  # each accepted exactly once
    assert st.injected["503"] + st.injected["429"] > 0 and faulty.proxy is not None and faulty.proxy.dropped > 0
    assert api.api.transport.stats()["retry"]["retries"] > 0


@pytest.mark.anyio
async def test_product_update_invalidates_cached_product(mode: str, clean: EmulatorServer) -> None:
    api = Both(mode, clean.url)
    first = await api("product", "get", "PN-1001")
    await api("product", "get", "PN-1001")
    assert clean.state.requests["GET /api/Product/{partNumber}"] == 1
    await api("product", "save", Product(partNumber="PN-1001", name="Renamed PSU"))
    after = await api("product", "get", "PN-1001")
    assert first.name != after.name == "Renamed PSU"
    assert clean.state.requests["GET /api/Product/{partNumber}"] == 2
    assert api.api.transport.stats()["cache"]["invalidations"] >= 1
    await api.close()


@pytest.mark.anyio
async def test_submitted_report_shows_in_cached_header_query(mode: str, clean: EmulatorServer) -> None:
    api = Both(mode, clean.url)
    assert await api("report", "query_headers", part_number="PN-1002") == []
    report = UUTReport(partNumber="PN-1002", serialNumber="SN-9")
    await api("report", "submit", report)
    headers = await api("report", "query_headers", part_number="PN-1002")
    assert [h.id for h in headers] == [report.id]
    resent = await api("report", "submit", report)
    assert resent.duplicate is True and len(clean.state.reports) == 1
    await api.close()


@pytest.mark.anyio
async def test_wrong_token_and_missing_product(mode: str, clean: EmulatorServer) -> None:
    bad: Any = (WATS if mode == "sync" else AsyncWATS)(clean.url, "wrong-token")
    with pytest.raises(UnauthorizedError) as info:
        result = bad.app.version()
        if mode == "async":
            await result
    assert info.value.status == 401 and "wrong-token" not in str(info.value)
    if mode == "sync":
        bad.close()
    else:
        await bad.aclose()
    api = Both(mode, clean.url)
    with pytest.raises(NotFoundError):
        await api("product", "get", "PN-0")
    await api.close()


@pytest.mark.anyio
async def test_clear_and_invalidate_cache_from_client(clean: EmulatorServer) -> None:
    async with AsyncWATS(clean.url, TOKEN) as api:
        await api.product.get("PN-1001")
        await api.asset.get("AS-1")
        assert api.invalidate_cache("/api/Product") == 1
        assert api.clear_cache() == 1
        await api.product.get("PN-1001")
        assert clean.state.requests["GET /api/Product/{partNumber}"] == 2


@pytest.mark.parametrize(("method", "path", "body", "says"), [
    ("GET", "/api/Report/Query/Header?$top=abc", None, "$top must be a whole number >= 0, got 'abc'"),
    ("GET", "/api/Product/Query?$top=-1", None, "$top must be a whole number >= 0, got '-1'"),
    ("PUT", "/api/Product", b"{not json", "body is not JSON"),
    ("PUT", "/api/Product", b'{"partNumber": ["PN-1"]}', "partNumber must be a string, got list"),
    ("PUT", "/api/Product", b'{"partNumber": "PN-9", "revisions": "A"}', "revisions must be a list of objects"),
    ("PUT", "/api/Asset", b'{"serialNumber": 5}', "serialNumber must be a string, got int"),
    ("POST", "/api/Report/WSJF", b"[1, 2]", "a report must be a JSON object"),
])
def test_the_emulator_answers_bad_input_with_a_400_naming_it(clean: EmulatorServer, method: str, path: str,
                                                             body: bytes | None, says: str) -> None:
    """Each of these failed inside the emulator with a 500 and a traceback (and the connection was reset),
    where the server answers 400: a test of a client's error handling met a crash instead."""
    import httpx

    with httpx.Client(base_url=clean.url, headers={"Authorization": f"Basic {TOKEN}"}) as client:
        answer = client.request(method, path, content=body)
        assert (answer.status_code, answer.json()["message"]) == (400, says)
        assert client.get("/api/App/Version").status_code == 200  # the same connection serves on


@pytest.mark.anyio
async def test_a_unit_of_a_product_saved_without_revisions(mode: str, clean: EmulatorServer) -> None:
    """A product created through the API has no revisions; asking for one of its units failed the emulator
    with a 500 (an IndexError), which the client took for a server error and retried."""
    api = Both(mode, clean.url, enable_cache=False, retry={"max_attempts": 1})
    try:
        await api("product", "save", Product(partNumber=f"NEW-{mode}", name="new"))
        unit = await api("production", "unit", "SN-1", f"NEW-{mode}")
        assert (unit.partNumber, unit.revision, unit.testRuns) == (f"NEW-{mode}", None, 0)
    finally:
        await api.close()


@pytest.mark.anyio
async def test_part_numbers_holding_a_slash_or_a_quote_round_trip(mode: str, clean: EmulatorServer) -> None:
    """The client sends ``A/1`` as the one segment ``A%2F1``; the emulator routed the decoded path, where
    it was two, and answered 404. Its query filter read ``'O''Brien'`` (OData's doubled quote) as nothing."""
    api = Both(mode, clean.url, enable_cache=False, retry={"max_attempts": 1})
    odd = f"O'Brien/{mode} #2?"
    try:
        await api("product", "save", Product(partNumber=odd, name="odd"))
        assert (await api("product", "get", odd)).name == "odd"
        assert [r.partNumber for r in await api("product", "revisions", odd)] == []
        assert [p.partNumber for p in await api("product", "query", part_number=odd)] == [odd]
        unit = await api("production", "unit", f"SN/{mode}", odd)
        assert (unit.serialNumber, unit.partNumber) == (f"SN/{mode}", odd)
        with pytest.raises(NotFoundError):
            await api("product", "get", f"O'Brien/{mode}")  # a prefix of it is another product
    finally:
        await api.close()


@pytest.mark.anyio
async def test_top_limits_the_answer_and_zero_is_none(mode: str, clean: EmulatorServer) -> None:
    """``$top=0`` answered every product (read as no limit); OData's ``$top=0`` asks for none."""
    api = Both(mode, clean.url, enable_cache=False)
    try:
        assert [len(await api("product", "query", top=n)) for n in (0, 2)] == [0, 2]
        assert len(await api("product", "query")) == len(clean.state.data["products"])
    finally:
        await api.close()
