from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from pywats_transport import WATS, AsyncWATS, ConfigError
from pywats_transport.wats import (
    NotFoundError,
    Product,
    RequestValidationError,
    ServerError,
    UnauthorizedError,
    UUTReport,
    WATSConnectionError,
    WATSError,
)
from pywats_transport.wats.calls import Call
from pywats_transport.wats.repositories import odata_filter

from .helpers import TlsVersionServer

BASE = "https://wats.example"
TOKEN = "c2VjcmV0LXRva2Vu"


def no_layers(**kw):  # type: ignore[no-untyped-def]
    return dict(enable_cache=False, enable_retry=False, enable_throttling=False, **kw)


def test_call_builds_request_with_route_extension_and_escaped_path() -> None:
    call: Call[Product] = Call("GET", "/api/Product/{partNumber}", Product, path={"partNumber": "PN 1/2"}, params={"a": None})
    with httpx.Client(base_url=BASE) as client:
        request = call.request(client)
    assert str(request.url) == f"{BASE}/api/Product/PN%201%2F2"
    assert request.extensions["route"] == "/api/Product/{partNumber}"
    with pytest.raises(ValueError, match="needs path parameter 'partNumber'"):
        Call("GET", "/api/Product/{partNumber}", Product).url()


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_a_path_parameter_that_would_address_another_resource_is_refused(value: str) -> None:
    """``product.get("..")`` asked for ``/api``, ``get(".")`` and ``get("")`` for the product collection:
    URL parsing removes dot segments, and an empty one leaves the collection's path."""
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.route().respond(200, json={"partNumber": "X"})
        with WATS(BASE, token=TOKEN, **no_layers()) as wats:
            with pytest.raises(ValueError, match=f"path parameter 'partNumber' must not be {value!r}"):
                wats.product.get(value)
            with pytest.raises(ValueError, match="'serialNumber' must not be"):
                wats.production.unit(value, "PN-1")
    assert not route.called  # refused before anything was sent


@pytest.mark.anyio
async def test_the_async_client_refuses_such_a_path_parameter_too() -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.route().respond(200, json={"serialNumber": "AS-1"})
        async with AsyncWATS(BASE, TOKEN, **no_layers()) as api:
            with pytest.raises(ValueError, match="path parameter 'idOrSerial' must not be '..'"):
                await api.asset.get("..")
    assert not route.called


def test_a_path_parameter_left_none_is_refused_not_sent_as_the_word_none() -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.route().respond(200, json={"partNumber": "None"})
        with WATS(BASE, token=TOKEN, **no_layers()) as wats:
            # before: GET /api/Product/None, and the server's 404 "product None not found"
            with pytest.raises(ValueError, match="GET /api/Product/{partNumber}: path parameter 'partNumber' must be "
                                                 "given, got None"):
                wats.product.get(None)  # type: ignore[arg-type]
    assert not route.called


@pytest.mark.parametrize(("given", "sent"), [
    ("2026-01-31", "start ge '2026-01-31'"),
    ("2026-01-31T08:00:00+01:00", "start ge '2026-01-31T08:00:00+01:00'"),
    (datetime(2026, 1, 31, 8, tzinfo=timezone.utc), "start ge '2026-01-31T08:00:00+00:00'"),
    (date(2026, 1, 31), "start ge '2026-01-31'"),
])
def test_a_report_query_takes_a_moment_as_a_datetime_a_date_or_iso_8601_text(given: Any, sent: str) -> None:
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/Report/Query/Header").respond(200, json=[])
        with WATS(BASE, token=TOKEN, **no_layers()) as wats:
            assert wats.report.query_headers(date_from=given) == []
    assert route.calls.last.request.url.params["$filter"] == sent


@pytest.mark.parametrize("given", ["yesterday", "31.01.2026", 20260131])
def test_a_report_query_refuses_what_is_no_moment_before_sending(given: Any) -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.route().respond(200, json=[])
        with WATS(BASE, token=TOKEN, **no_layers()) as wats:
            # before: sent as "start le 'yesterday'", and whatever the server made of it answered
            with pytest.raises(ValueError, match=f"date_to must be a datetime, a date or an ISO 8601 text, got {given!r}"):
                wats.report.query_headers(date_to=given)
    assert not route.called


def test_odata_filter_quotes_values() -> None:
    assert odata_filter(partNumber="PN-1", serialNumber=None, name="O'Neil") == "partNumber eq 'PN-1' and name eq 'O''Neil'"
    assert odata_filter() is None


@respx.mock
def test_sync_repositories_send_the_documented_routes() -> None:
    product = respx.get(f"{BASE}/api/Product/PN-1").mock(return_value=httpx.Response(200, json={"partNumber": "PN-1", "name": "PSU"}))
    query = respx.get(f"{BASE}/api/Product/Query").mock(return_value=httpx.Response(200, json=[{"partNumber": "PN-1"}]))
    put = respx.put(f"{BASE}/api/Product").mock(return_value=httpx.Response(200, json={"partNumber": "PN-1", "name": "New"}))
    headers = respx.get(f"{BASE}/api/Report/Query/Header").mock(return_value=httpx.Response(200, json=[]))
    submit = respx.post(f"{BASE}/api/Report/WSJF").mock(return_value=httpx.Response(201, json={"id": "x"}))
    unit = respx.get(f"{BASE}/api/Production/Unit/SN-1/PN-1").mock(
        return_value=httpx.Response(200, json={"serialNumber": "SN-1", "partNumber": "PN-1"}))
    status = respx.get(f"{BASE}/api/Asset/Status").mock(return_value=httpx.Response(200, json={"serialNumber": "A", "status": "OK"}))
    with WATS(BASE, TOKEN, **no_layers()) as api:
        assert api.product.get("PN-1").name == "PSU"
        assert api.product.query(group="Power", top=5)[0].partNumber == "PN-1"
        assert api.product.save(Product(partNumber="PN-1", name="New")).name == "New"
        assert api.report.query_headers(part_number="PN-1", top=10) == []
        assert api.report.submit(UUTReport(partNumber="PN-1", serialNumber="SN-1")).id == "x"
        assert api.production.unit("SN-1", "PN-1").serialNumber == "SN-1"
        assert api.asset.status("A").status == "OK"
    assert product.calls.last.request.headers["authorization"] == f"Basic {TOKEN}"
    assert query.calls.last.request.url.params["$filter"] == "productGroup eq 'Power'"
    assert query.calls.last.request.url.params["$top"] == "5"
    assert json.loads(put.calls.last.request.content) == {"partNumber": "PN-1", "name": "New", "revisions": []}
    assert headers.calls.last.request.url.params["$filter"] == "partNumber eq 'PN-1'"
    sent = json.loads(submit.calls.last.request.content)
    assert sent["partNumber"] == "PN-1" and sent["type"] == "T" and len(sent["id"]) == 36
    assert unit.called and status.calls.last.request.url.params["serialNumber"] == "A"


@respx.mock
@pytest.mark.anyio
async def test_async_repositories_share_the_definitions() -> None:
    respx.get(f"{BASE}/api/App/Processes").mock(return_value=httpx.Response(200, json=[{"code": 100, "name": "FT"}]))
    respx.get(f"{BASE}/api/App/Version").mock(return_value=httpx.Response(200, json={"version": "1"}))
    respx.get(f"{BASE}/api/Software/Packages").mock(return_value=httpx.Response(200, json=[{"name": "seq"}]))
    respx.get(f"{BASE}/api/Product/Groups").mock(return_value=httpx.Response(200, json=[{"name": "Power"}]))
    respx.get(f"{BASE}/api/Product/PN-1/Revisions").mock(return_value=httpx.Response(200, json=[{"revision": "A"}]))
    respx.get(f"{BASE}/api/Asset/AS-1").mock(return_value=httpx.Response(200, json={"serialNumber": "AS-1"}))
    respx.get(f"{BASE}/api/Report/Wsjf/r1").mock(
        return_value=httpx.Response(200, json={"id": "r1", "partNumber": "PN-1", "serialNumber": "S"}))
    async with AsyncWATS(BASE, TOKEN, **no_layers()) as api:
        assert (await api.process.list())[0].code == 100
        assert (await api.app.version()).version == "1"
        assert (await api.software.packages())[0].name == "seq"
        assert (await api.product.groups())[0].name == "Power"
        assert (await api.product.revisions("PN-1"))[0].revision == "A"
        assert (await api.asset.get("AS-1")).serialNumber == "AS-1"
        assert (await api.report.get("r1")).id == "r1"


@respx.mock
@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFoundError), (401, UnauthorizedError), (403, UnauthorizedError), (400, RequestValidationError),
     (422, RequestValidationError), (500, ServerError), (503, ServerError), (418, WATSError)],
)
def test_errors_map_to_hierarchy_with_status_and_route(status: int, error: type[Exception]) -> None:
    respx.get(f"{BASE}/api/Product/PN-9").mock(return_value=httpx.Response(status, json={"message": "nope"}))
    with WATS(BASE, TOKEN, **no_layers()) as api, pytest.raises(error) as info:
        api.product.get("PN-9")
    assert info.value.status == status and info.value.route == "/api/Product/{partNumber}"  # type: ignore[attr-defined]
    assert TOKEN not in str(info.value)


@respx.mock
def test_connection_errors_and_bad_answers() -> None:
    respx.get(f"{BASE}/api/App/Version").mock(side_effect=httpx.ConnectError(f"refused for {TOKEN}"))
    respx.get(f"{BASE}/api/Product/PN-1").mock(return_value=httpx.Response(200, json={"unexpected": True}))
    with WATS(BASE, TOKEN, **no_layers()) as api:
        # Why it failed, never the token (a proxy or a TLS library may echo what it was given).
        with pytest.raises(WATSConnectionError, match=r"^GET /api/App/Version failed: ConnectError: refused for \*\*\*$"):
            api.app.version()
        with pytest.raises(WATSError, match="unexpected answer"):
            api.product.get("PN-1")


def test_token_never_in_repr_and_arguments_checked() -> None:
    api = WATS(BASE, TOKEN)
    assert TOKEN not in repr(api) and "***" in repr(api)
    api.close()
    with pytest.raises(ValueError, match="base_url must be an http"):
        WATS("wats.example", TOKEN)
    with pytest.raises(ValueError, match="token must be a non-empty"):
        WATS(BASE, "")
    # every route starts with /api: a base ending with it asked for /api/api/... and met 404s
    with pytest.raises(ValueError, match=r"without /api \(the routes add it\): 'https://wats.example/wats', got"):
        AsyncWATS("https://wats.example/wats/api/", TOKEN)


def test_flags_and_config_build_the_chain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = WATS(BASE, TOKEN)
    assert api.transport.names == ["cache", "retry", "throttle"]  # base_url and token only: caching on
    api.close()
    api = WATS(BASE, TOKEN, enable_cache=False, rate_limit=2.5, retry={"max_attempts": 5}, enable_metrics=True)
    assert api.transport.names == ["metrics", "retry", "throttle"]
    assert api.config.throttle.rate == 2.5 and api.config.retry.max_attempts == 5
    api.close()
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"cache": {"ttl": 30}, "throttle": {"enabled": False}}))
    api = WATS(BASE, TOKEN, config=str(cfg), cache_ttl=60)
    assert api.transport.names == ["cache", "retry"] and api.config.cache.ttl == 60
    api.close()


@pytest.mark.parametrize("cls", [WATS, AsyncWATS])
def test_a_flag_given_at_its_usual_value_still_overrides_config_and_environment(
        cls: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag equal to its old default (``enable_throttling=True``, ``cache_ttl=300``) was taken for not
    given: the config file or the environment turning the layer off (or setting another TTL) won over
    the code that asked for it."""
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"cache": {"ttl": 30, "enabled": False}, "throttle": {"enabled": False}}))
    api = cls(BASE, TOKEN, config=str(cfg), enable_cache=True, cache_ttl=300.0, enable_throttling=True)
    assert api.transport.names == ["cache", "retry", "throttle"] and api.config.cache.ttl == 300.0
    assert api.config.sources()["throttle.enabled"] == "flags"
    monkeypatch.setenv("PYWATS_TRANSPORT_RETRY__ENABLED", "false")
    monkeypatch.setenv("PYWATS_TRANSPORT_METRICS__ENABLED", "true")
    monkeypatch.setenv("PYWATS_TRANSPORT_THROTTLE__RATE", "7")
    api = cls(BASE, TOKEN, enable_retry=True, enable_metrics=False, rate_limit=3)
    # the chain is built as the client's config says: the environment is not applied again over the flags
    assert api.transport.names == ["cache", "retry", "throttle"]
    assert api.config.throttle.rate == api.transport.get_layer("throttle").policy.settings.rate == 3
    # a flag not given leaves the environment's and the config's values
    api = cls(BASE, TOKEN, config=str(cfg))
    assert api.transport.names == ["metrics"] and api.config.cache.ttl == 30


def test_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="WATS_BASE_URL, WATS_AUTH_TOKEN must be set"):
        WATS.from_env()
    monkeypatch.setenv("WATS_BASE_URL", BASE)
    monkeypatch.setenv("WATS_AUTH_TOKEN", TOKEN)
    api = AsyncWATS.from_env(enable_cache=False)
    assert api.base_url == BASE and "cache" not in api.transport.names
    client_json = tmp_path / "client.json"
    client_json.write_text(json.dumps({"service_address": BASE, "api_token": "t", "transport": {}}))
    with pytest.raises(ConfigError, match="client.json is the client service's config .*give its 'transport' section"):
        WATS.from_config(client_json)
    monkeypatch.setenv("WATS_BASE_URL", BASE + "/api")
    with pytest.raises(ValueError, match=r"environment variable WATS_BASE_URL must be the WATS server's address"):
        WATS.from_env()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_server_that_echoes_the_token_does_not_put_it_in_an_error(mode: str) -> None:
    """The server's words went into the exception whole: a server echoing the token it refused (or the
    user and password it decoded from it) put the secret in the error, and from there in logs and in the
    client service's /health/details."""
    import base64

    token = base64.b64encode(b"station7:hunter2-pass").decode()
    echoes = {
        "/api/Product/A": httpx.Response(401, json={"message": f"token {token} is not valid"}),
        "/api/Product/B": httpx.Response(403, text="user station7:hunter2-pass may not read products"),
        "/api/Product/C": httpx.Response(400, json={"Message": "password hunter2-pass expired"}),
        "/api/Product/D": httpx.Response(200, json={"partNumber": ["not", "a", "string", token]}),
    }
    with respx.mock(base_url=BASE) as mock:
        for path, answer in echoes.items():
            mock.get(path).mock(return_value=answer)
        for path in echoes:
            part = path.rsplit("/", 1)[1]
            with pytest.raises(WATSError) as info:
                if mode == "sync":
                    with WATS(BASE, token, **no_layers()) as api:
                        api.product.get(part)
                else:
                    async with AsyncWATS(BASE, token, **no_layers()) as aapi:
                        await aapi.product.get(part)
            message = str(info.value)
            assert not any(token[i:i + 8] in message for i in range(len(token) - 7)), message
            assert "hunter2" not in message
            if part == "D":  # where the answer is wrong, never what it holds
                assert message.endswith("unexpected answer (ValidationError: partNumber: Input should be a valid string)")
            else:
                assert "***" in message


@pytest.mark.parametrize("token", ["t", "tok", "dTpw"])  # "dTpw" is base64 of "u:p"
def test_a_short_token_does_not_mask_the_words_of_a_message(token: str) -> None:
    """A test token of one letter masked every letter of it in the server's words: "No*** Found"."""
    api = WATS(BASE, token, transport=httpx.MockTransport(lambda r: httpx.Response(404, text="Not Found: u:p")),
               enable_retry=False)
    with pytest.raises(NotFoundError) as info:
        api.product.get("PN-1")
    assert str(info.value).endswith("failed with 404: Not Found: u:p")
    api.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_report_dict_without_an_id_is_retried_under_one_id(mode: str) -> None:
    """A report submission is marked idempotent and retried when its answer is lost, but a dict without
    an id was sent without one each time: a server that gives an id-less report one stored it twice."""
    seen: list[Any] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content).get("id"))
        if len(seen) == 1:
            raise httpx.ReadError("connection dropped after the server stored it", request=request)
        return httpx.Response(200, json={"id": seen[-1], "duplicate": True})

    report = {"partNumber": "PN-1", "serialNumber": "SN-1", "result": "P"}
    flags = dict(enable_cache=False, enable_throttling=False, retry={"backoff_base": 0.001})
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/Report/WSJF").mock(side_effect=server)
        if mode == "sync":
            with WATS(BASE, TOKEN, **flags) as api:
                result = api.report.submit(report)
        else:
            async with AsyncWATS(BASE, TOKEN, **flags) as aapi:
                result = await aapi.report.submit(report)
    assert len(seen) == 2 and seen[0] and seen[0] == seen[1] == result.id
    assert "id" not in report  # the caller's dict is left as it was


@pytest.mark.parametrize(("fields", "says"), [
    ({"partNumber": "", "serialNumber": "SN-1"}, "partNumber\n  Value error, must not be empty"),
    ({"partNumber": "PN-1", "serialNumber": ""}, "serialNumber\n  Value error, must not be empty"),
    ({"partNumber": "PN-1", "serialNumber": "SN-1", "id": "report-7"},
     "id\n  Value error, must be a UUID, as str(uuid.uuid4()) gives (the default)"),
    ({"partNumber": "PN-1", "serialNumber": "SN-1", "start": "yesterday"},  # before: accepted, and sent
     "start\n  Value error, must be a datetime or ISO 8601 text, got 'yesterday'"),
])
def test_a_report_the_server_would_refuse_is_refused_where_it_is_made(fields: dict[str, Any], says: str) -> None:
    """An id that is no UUID, or an empty part or serial number, went as far as the server's 400 (or the
    outbox's refusal), far from the line that made the report."""
    with pytest.raises(ValidationError) as info:
        UUTReport(**fields)
    assert says in str(info.value)
    report = UUTReport(partNumber="PN-1", serialNumber="SN-1", id="6C1A3F0E-2D4B-4E58-9A57-1F0D3C2B7E11")
    assert report.id == "6c1a3f0e-2d4b-4e58-9a57-1f0d3c2b7e11"  # as the server and the queue spell it


def test_a_report_starts_at_a_datetime_as_well_as_at_iso_8601_text() -> None:
    """``UUTReport(start=datetime.now(timezone.utc))`` was refused: "Input should be a valid string"."""
    aware = datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)
    assert UUTReport(partNumber="PN-1", serialNumber="SN-1", start=aware).start == "2026-11-30T08:15:00+00:00"
    naive = datetime(2026, 11, 30, 8, 15)  # a station's clock: local time, sent with the local offset
    assert UUTReport(partNumber="PN-1", serialNumber="SN-1", start=naive).start == naive.astimezone().isoformat()
    assert UUTReport(partNumber="PN-1", serialNumber="SN-1", start="2026-11-30T08:15:00Z").start == "2026-11-30T08:15:00Z"
    # the server's answer is taken as it wrote it
    from pywats_transport.wats.models import ANSWER

    answer = UUTReport.model_validate({"partNumber": "P", "serialNumber": "S", "start": "30.11.2026"}, context=ANSWER)
    assert answer.start == "30.11.2026"


@pytest.fixture
def tls_wats(tmp_path: Path) -> Any:
    with TlsVersionServer(tmp_path / "factory-ca.pem") as server:
        yield server.url, server.ca_file


def _version(cls: Any, url: str, **kw: Any) -> str:
    import asyncio

    if cls is WATS:
        with WATS(url, TOKEN, **no_layers(), **kw) as api:
            return str(api.app.version().version)

    async def run() -> str:
        async with AsyncWATS(url, TOKEN, **no_layers(), **kw) as api:
            return str((await api.app.version()).version)
    return asyncio.run(run())


@pytest.mark.parametrize("cls", [WATS, AsyncWATS])
def test_a_server_certificate_of_a_private_ca(cls: Any, tls_wats: Any, tmp_path: Path) -> None:
    """An untrusted certificate, a refused connection and an unknown host all said "failed: ConnectError",
    with nothing of which it was; and verify_ssl took only True or False, so a factory's own CA could be
    trusted only through the environment."""
    import ssl

    url, ca_file = tls_wats
    with pytest.raises(WATSConnectionError) as info:
        _version(cls, url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and "give verify_ssl the CA certificate" in str(info.value)
    assert _version(cls, url, verify_ssl=str(ca_file)) == "24.1"
    assert _version(cls, url, verify_ssl=ca_file) == "24.1"
    assert _version(cls, url, verify_ssl=ssl.create_default_context(cafile=str(ca_file))) == "24.1"
    folder = tmp_path / "certs"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"cannot be used as CA certificates: the folder holds no .pem, .crt, .cer"):
        cls(url, TOKEN, verify_ssl=folder)
    # A folder of certificates copied in by name (not as OpenSSL's c_rehash names them), among other files.
    (folder / "README.txt").write_text("the factory's CAs")
    (folder / "Factory-CA.CRT").write_bytes(ca_file.read_bytes())
    assert _version(cls, url, verify_ssl=folder) == "24.1"
    (folder / "broken.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"cannot be used as CA certificates: broken.pem: "):
        cls(url, TOKEN, verify_ssl=folder)
    with pytest.raises(ValueError, match=r"verify_ssl '.*missing.pem' cannot be used as CA certificates: No such file"):
        cls(url, TOKEN, verify_ssl=tmp_path / "missing.pem")
    (tmp_path / "not-a-cert.pem").write_text("hello")
    with pytest.raises(ValueError, match=r"verify_ssl '.*not-a-cert.pem' cannot be used as CA certificates"):
        cls(url, TOKEN, verify_ssl=tmp_path / "not-a-cert.pem")
    with pytest.raises(ValueError, match=r"verify_ssl must be True, False, a CA certificate file or folder, or an "
                                         r"ssl.SSLContext, got 1"):
        cls(url, TOKEN, verify_ssl=1)
    with pytest.raises(WATSConnectionError, match=r"failed: ConnectError: .*(refused|Errno)"):
        _version(cls, "http://127.0.0.1:9")
    # With a transport of the caller's own, the check is that transport's: verify_ssl would do nothing.
    with pytest.raises(ValueError, match=r"verify_ssl applies to the network transport the client makes"):
        cls(url, TOKEN, verify_ssl=ca_file, transport=httpx.MockTransport(lambda r: httpx.Response(200)))


@pytest.mark.parametrize("cls", [WATS, AsyncWATS])
def test_timeout_takes_seconds_or_an_httpx_timeout(cls: Any) -> None:
    """``timeout=httpx.Timeout(30, connect=5)`` (httpx's own way to say it) was "'<=' not supported between
    instances of 'Timeout' and 'int'", as was any other wrong type."""
    api = cls(BASE, TOKEN, timeout=httpx.Timeout(30, connect=5))
    assert api._http.timeout == httpx.Timeout(30, connect=5)
    assert cls(BASE, TOKEN, timeout=12)._http.timeout == httpx.Timeout(12)
    for bad in ("30", None, 0, -1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match=r"timeout must be seconds > 0 or an httpx.Timeout \(httpx.Timeout\(30, "
                                             r"connect=5\); httpx.Timeout\(None\): no limit\), got "):
            cls(BASE, TOKEN, timeout=bad)


@pytest.mark.parametrize(("address", "problem"), [
    ("https://", "must name a host, as in https://wats.example.com"),
    ("https://wats example.com", "must not contain spaces"),
    (" https://wats.example.com", "must not contain spaces"),
    ("https://wats.example.com?site=2", "must be the server's address alone, without a query or fragment"),
    ("ftp://wats.example.com", "must be an http:// or https:// URL"),
])
def test_a_wats_address_is_checked_alike_in_code_the_environment_and_client_json(
        address: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``WATS("https://", token)`` was taken (its base became "https:", every call failing later, far from
    the cause), as were a space in the host and a query; ``HTTPS://`` (a scheme is case-blind) was refused."""
    from pywats_transport.service import ClientConfig

    with pytest.raises(ValueError, match=rf"^base_url {re.escape(problem)}, got "):
        WATS(address, TOKEN)
    monkeypatch.setenv("WATS_BASE_URL", address)
    monkeypatch.setenv("WATS_AUTH_TOKEN", TOKEN)
    with pytest.raises(ValueError, match=rf"^environment variable WATS_BASE_URL {re.escape(problem)}, got "):
        AsyncWATS.from_env()
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"service_address": address, "api_token": TOKEN}))
    with pytest.raises(ConfigError, match=rf"service_address = .*: {re.escape(problem)}"):
        ClientConfig.load(path, environ={})


def test_a_wats_address_takes_any_case_of_scheme_and_a_path() -> None:
    with WATS("HTTPS://wats.example.com/wats/", TOKEN) as api:
        assert api.base_url == "HTTPS://wats.example.com/wats"
        assert str(api._http.build_request("GET", "/api/App/Version").url) == "https://wats.example.com/wats/api/App/Version"
