"""A stack dropped into an existing httpx app: defaults, HTTP correctness, transport options, errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport import (
    WATS,
    AsyncWATS,
    ConfigError,
    ThrottledError,
    TransportConfig,
    build_async_transport,
    build_transport,
)
from pywats_transport.layers import (
    AsyncCacheLayer,
    AsyncRetryLayer,
    AsyncThrottleLayer,
    CacheLayer,
    RetryLayer,
    ThrottleLayer,
)

from .helpers import Caller, Counter


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(mode: str, handler: Any, **flags: Any) -> Any:
    inner = handler if isinstance(handler, httpx.MockTransport) else httpx.MockTransport(handler)
    return (build_transport if mode == "sync" else build_async_transport)(inner=inner, **flags)


class Sleeps:
    """A sleep that records and returns at once (sync and async)."""

    def __init__(self, mode: str) -> None:
        self.mode, self.waits = mode, []

    def __call__(self, seconds: float) -> Any:
        self.waits.append(seconds)
        if self.mode == "async":
            async def done() -> None:
                return None
            return done()
        return None


# -- 1. Retry-After and the throttle ---------------------------------------------------------

def throttled(mode: str, handler: Any, **settings: Any) -> tuple[Caller, Any, Sleeps]:
    sleeps = Sleeps(mode)
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(handler), sleep=sleeps, **settings)
    return Caller(mode, layer), layer, sleeps


@pytest.mark.anyio
async def test_one_long_retry_after_does_not_stall_the_host(mode: str) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "3600"})])
    caller, _, sleeps = throttled(mode, lambda r: next(answers, httpx.Response(200)), enabled=True, rate=100)
    assert (await caller.get("/a")).status_code == 429
    r = await caller.get("/a", timeout=httpx.Timeout(5.0, pool=None))
    assert r.status_code == 200
    assert max(sleeps.waits) <= 30.0  # capped at retry_after_max, the retry layer's backoff_max
    await caller.close()


@pytest.mark.anyio
async def test_a_wait_longer_than_the_pool_timeout_fails_at_once(mode: str) -> None:
    caller, layer, sleeps = throttled(mode, lambda r: httpx.Response(200), enabled=True, rate=0.5, burst=1)
    await caller.get("/a")
    with pytest.raises(ThrottledError) as info:
        await caller.get("/a", timeout=httpx.Timeout(5.0, pool=0.5))
    assert isinstance(info.value, httpx.TimeoutException) and info.value.wait > 0.5
    assert "timeout" in str(info.value) and sleeps.waits == []
    # without a pool timeout the request waits its turn
    assert (await caller.get("/a", timeout=httpx.Timeout(5.0, pool=None))).status_code == 200
    assert sleeps.waits and sleeps.waits[0] == pytest.approx(2.0, abs=0.1)
    await caller.close()


@pytest.mark.anyio
async def test_a_throttle_timeout_is_not_retried_and_the_deadline_counts_waits(mode: str) -> None:
    server = Counter()
    stack = build(mode, server, enable_cache=False, throttle={"enabled": True, "rate": 0.5, "burst": 1},
                  retry={"deadline": 1.0})
    caller = Caller(mode, stack)
    await caller.get("/a")
    with pytest.raises(ThrottledError, match="deadline"):
        await caller.get("/a", timeout=httpx.Timeout(5.0, pool=None))  # 2 s wait > 1 s retry deadline
    assert server.count == 1 and stack.stats()["retry"]["retries"] == 0
    await caller.close()


# -- 2. two sets of defaults --------------------------------------------------------------------

@pytest.mark.anyio
async def test_generic_builders_do_not_throttle_an_app(mode: str) -> None:
    server = Counter()
    stack = build(mode, server)
    assert stack.names == ["cache", "retry"]
    caller = Caller(mode, stack)
    for i in range(40):
        await caller.get(f"/items/{i}")
    assert server.count == 40 and "throttle" not in stack.stats()
    await caller.close()


def test_wats_clients_apply_the_wats_profile() -> None:
    with WATS("http://wats.test", "t", transport=httpx.MockTransport(lambda r: httpx.Response(200))) as api:
        cfg = api.config
        assert api.transport.names == ["cache", "retry", "throttle"]
        assert (cfg.profile, cfg.cache.mode, cfg.cache.ttl, cfg.cache.max_size, cfg.cache.store_no_store) == (
            "wats", "ttl", 300.0, 1000, True)
        assert cfg.source_of("throttle.enabled") == "profile wats"
    api2 = AsyncWATS("http://wats.test", "t", enable_throttling=False, cache_ttl=30)
    assert api2.transport.names == ["cache", "retry"] and api2.config.source_of("cache.ttl") == "flags"


def test_config_remembers_where_each_value_came_from(tmp_path: Any) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cache": {"ttl": 12}}))
    cfg = TransportConfig.load(path, profile="wats", environ={"PYWATS_TRANSPORT_RETRY__MAX_ATTEMPTS": "5"},
                               retry_backoff_base=0.1)
    assert cfg.source_of("cache.ttl") == f"file {path}"
    assert cfg.source_of("cache.mode") == "profile wats"
    assert cfg.source_of("retry.max_attempts") == "environment PYWATS_TRANSPORT_RETRY__MAX_ATTEMPTS"
    assert cfg.source_of("retry.backoff_base") == "flags" and cfg.source_of("retry.jitter") == "default"
    with pytest.raises(ConfigError, match="profile = 'factory': unknown profile; allowed: generic, wats"):
        TransportConfig.load(profile="factory")


def test_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"throttle\.rate \(from environment PYWATS_TRANSPORT_THROTTLE__RATE\)"):
        TransportConfig.load(environ={"PYWATS_TRANSPORT_THROTTLE__RATE": "fast"})


def test_an_invalid_value_names_where_it_came_from(tmp_path: Path) -> None:
    # A flag's bad value was reported as "in config", with no config given.
    with pytest.raises(ConfigError) as raised:
        TransportConfig.load(redis_url="http://x")
    assert str(raised.value).startswith("invalid TransportConfig: redis.url (from flags) = 'http://x'")
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"cache": {"ttl": 60}}))
    with pytest.raises(ConfigError) as raised:
        TransportConfig.load(path, cache_ttl=-1)
    assert str(raised.value).startswith(f"invalid TransportConfig in file {path}: cache.ttl (from flags) = -1")
    path.write_text(json.dumps({"cache": {"ttl": -1}}))
    with pytest.raises(ConfigError) as raised:
        TransportConfig.load(path)
    assert str(raised.value).startswith(f"invalid TransportConfig in file {path}: cache.ttl = -1")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pywats_transport", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env} if env else None)


def test_cli_stack_shows_profile_and_sources_and_reads_a_client_file(tmp_path: Any) -> None:
    out = run_cli("stack")
    assert out.returncode == 0 and out.stdout.startswith("profile: generic") and "throttle" not in out.stdout
    out = run_cli("stack", "--profile", "wats")
    assert 'mode = "ttl"  (profile wats)' in out.stdout and "throttle" in out.stdout
    client = tmp_path / "client.json"
    client.write_text(json.dumps({"service_address": "http://127.0.0.1:1", "api_token": "tok-secret",
                                  "cache_ttl_seconds": 42}))
    out = run_cli("stack", "--config", str(client), "--json")
    assert out.returncode == 0, out.stderr
    chain = json.loads(out.stdout)
    cache = next(item for item in chain if item["name"] == "cache")
    assert cache["settings"]["ttl"] == 42 and cache["sources"]["ttl"] == "flags"
    assert "tok-secret" not in out.stdout + out.stderr
    # client.json's transport section: above the WATS profile, beneath the flat keys (here from the
    # environment: the file giving both is refused).
    section = {"cache": {"storage": "redis", "ttl": 60}, "throttle": {"backend": "redis", "rate": 3},
               "redis": {"url": "redis://station:pw-9@10.0.0.5:6379/0"}}
    client.write_text(json.dumps({"service_address": "http://127.0.0.1:1", "api_token": "tok-secret", "rate_limit": 7,
                                  "transport": section}))
    out = run_cli("stack", "--config", str(client))
    assert out.returncode == 2 and "rate_limit = 7.0 and transport.throttle.rate = 3 both set it" in out.stderr
    client.write_text(json.dumps({"service_address": "http://127.0.0.1:1", "api_token": "tok-secret",
                                  "transport": section}))
    out = run_cli("stack", "--config", str(client), "--json", env={"PYWATS_CLIENT_RATE_LIMIT": "7"})
    assert out.returncode == 0, out.stderr
    chain = {item["name"]: item for item in json.loads(out.stdout)}
    cache, throttle = chain["cache"], chain["throttle"]
    assert (cache["settings"]["storage"], cache["sources"]["storage"]) == ("redis", "config")
    assert (cache["settings"]["ttl"], cache["settings"]["mode"]) == (60, "ttl")  # the profile's mode stays
    assert cache["settings"]["redis_url"] == "redis://station:***@10.0.0.5:6379/0"
    assert (throttle["settings"]["backend"], throttle["settings"]["rate"]) == ("redis", 7)
    assert "pw-9" not in out.stdout + out.stderr


def test_a_password_in_a_redis_url_is_never_shown(tmp_path: Any) -> None:
    """``stack`` and the service's ``/health/details`` print every layer's settings: not the Redis password."""
    config = tmp_path / "transport.json"
    config.write_text(json.dumps({
        "cache": {"storage": "redis", "redis_url": "redis://station:pw-cache-9@127.0.0.1:1/0"},
        "throttle": {"enabled": True, "backend": "redis", "redis_url": "rediss://:pw-rate-9@10.0.0.5:6380/1"}}))
    for args in (("--json",), ()):
        out = run_cli("stack", "--config", str(config), *args)
        assert out.returncode == 0, out.stderr
        assert "pw-cache-9" not in out.stdout and "pw-rate-9" not in out.stdout
    chain = {item["name"]: item for item in json.loads(run_cli("stack", "--config", str(config), "--json").stdout)}
    # What is not secret stays visible: the user, the host, the port and the database.
    assert chain["cache"]["settings"]["redis_url"] == "redis://station:***@127.0.0.1:1/0"
    assert chain["throttle"]["settings"]["redis_url"] == "rediss://:***@10.0.0.5:6380/1"
    stack = build_transport(cache={"storage": "redis", "redis_url": "redis://:pw-x@127.0.0.1:1/0"})
    try:
        assert "pw-x" not in json.dumps(stack.describe())
    finally:
        stack.close()


@pytest.mark.parametrize(("url", "shown", "readable"), [
    ("redis://station:pw@9x@10.0.0.5:6379/0", "redis://station:***@10.0.0.5:6379/0", True),  # '@' unencoded
    ("redis://:pw/9x@10.0.0.5/0", "redis://:***@10.0.0.5/0", False),  # '/' unencoded
    ("redis://station:pw?9x@10.0.0.5/0?db=1", "redis://station:***@10.0.0.5/0?db=1", False),  # '?' unencoded
    ("rediss+cluster://station:pw@9x@h1:7000,h2:7001", "rediss+cluster://station:***@h1:7000,h2:7001", True),
    ("redis://station:pw%409x@h:1/0?ssl_certfile=/etc/a@b.pem", "redis://station:***@h:1/0?ssl_certfile=/etc/a@b.pem",
     True),
    ("unix:///run/a@b/redis.sock", "unix:///run/a@b/redis.sock", True),  # no credentials
])
def test_a_password_with_url_characters_is_masked_whole(url: str, shown: str, readable: bool) -> None:
    """redis-py reads the credentials up to the last '@' before the host: ``stack``, ``/health/details`` and
    configuration errors showed what followed a password's first '@' (or '/'), and a URL redis-py cannot
    read failed with redis-py's own error, which quoted the password."""
    from pywats_transport.config import redacted

    assert redacted(url) == shown and redacted(f"Error with {url}: refused") == f"Error with {shown}: refused"
    if not readable:
        with pytest.raises(ConfigError) as refused:
            build_transport(cache={"storage": "redis", "redis_url": url})
        message = str(refused.value)
        assert "cache.redis_url" in message and "must be percent-encoded" in message and "9x" not in message
        return
    stack = build_transport(cache={"storage": "redis", "redis_url": url})
    try:
        assert "9x" not in json.dumps(stack.describe())
    finally:
        stack.close()
    if url.startswith("redis"):  # as an error quotes a refused value
        with pytest.raises(ConfigError) as info:
            TransportConfig.load({"redis": {"url": url.replace("redis", "http", 1)}}, environ={})
        assert "9x" not in str(info.value) and "***" in str(info.value)


def test_cli_version_quiet_pipe_and_plain_help() -> None:
    assert run_cli("--version").stdout.strip().startswith("pywats-transport ")
    assert "``" not in run_cli("--help").stdout
    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "stack", "--json", "--profile", "wats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"BrokenPipeError" not in err and b"Traceback" not in err


# -- 3. Vary and no-store in ttl mode ----------------------------------------------------------

def by_accept(request: httpx.Request) -> httpx.Response:
    accept = request.headers.get("accept", "")
    return httpx.Response(200, text=f"body for {accept}", headers={"Vary": "Accept"})


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_variants_are_kept_apart(mode: str, cache_mode: str, storage: str, tmp_path: Path) -> None:
    """On SQLite in ttl mode hishel served the first entry of the key, whatever variant it was."""
    def handler(request: httpx.Request) -> httpx.Response:
        response = by_accept(request)
        response.headers["Cache-Control"] = "max-age=60"
        return response

    caller = Caller(mode, build(mode, handler, cache_mode=cache_mode, cache_storage=storage,
                                cache_sqlite_path=str(tmp_path / "cache.db")))
    json_1 = await caller.get("/v", headers={"Accept": "application/json"})
    text_1 = await caller.get("/v", headers={"Accept": "text/plain"})
    json_2 = await caller.get("/v", headers={"Accept": "application/json"})
    text_2 = await caller.get("/v", headers={"Accept": "text/plain"})
    assert (json_1.text, text_1.text) == ("body for application/json", "body for text/plain")
    assert json_2.text == json_1.text and json_2.extensions["caching"]["from_cache"]
    assert text_2.text == text_1.text and text_2.extensions["caching"]["from_cache"]
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_vary_star_never_matches_and_no_store_is_not_stored(mode: str, storage: str, tmp_path: Path) -> None:
    headers = {"/star": {"Vary": "*"}, "/nostore": {"Cache-Control": "no-store"}}
    server = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        server(request)
        return httpx.Response(200, json={"n": server.count}, headers=headers[request.url.path])

    caller = Caller(mode, build(mode, handler, cache_mode="ttl", cache_storage=storage,
                                cache_sqlite_path=str(tmp_path / "cache.db")))
    for path in ("/star", "/star", "/nostore", "/nostore"):
        assert not (await caller.get(path)).extensions["caching"]["from_cache"]
    assert server.count == 4
    await caller.close()
    wats = Caller(mode, build(mode, handler, profile="wats", cache_storage=storage,  # store_no_store: the seed
                              cache_sqlite_path=str(tmp_path / "wats.db")))  # plan caches regardless
    await wats.get("/nostore")
    assert (await wats.get("/nostore")).extensions["caching"]["from_cache"]
    await wats.close()


# -- 4. rotating cookies ------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_rotating_affinity_cookies_do_not_defeat_caching(mode: str, cache_mode: str) -> None:
    server = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        server(request)
        return httpx.Response(200, json={"n": server.count}, headers={
            "Set-Cookie": f"AWSALB=affinity-{server.count}; Path=/", "Cache-Control": "max-age=60"})

    caller = Caller(mode, build(mode, handler, cache_mode=cache_mode))
    caller.client.headers["Authorization"] = "Bearer token-1"
    for _ in range(10):
        await caller.get("/api/Product/P1")
    assert server.count == 1
    assert "affinity" in caller.client.headers.get("cookie", "") or caller.client.cookies
    # cookie-authenticated apps (no Authorization, no X-Api-Key) still keep their sessions apart
    anon = Caller(mode, build(mode, handler, cache_mode=cache_mode))
    await anon.get("/me", headers={"Cookie": "session=alice"})
    await anon.get("/me", headers={"Cookie": "session=bob"})
    assert server.count == 3
    await caller.close()
    await anon.close()


# -- 5. compressed bodies read below the cache -------------------------------------------------

class ReadingTransport(httpx.MockTransport):
    """A transport that hands back responses whose bodies were already read (and so decoded)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        await response.aread()
        return response


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_a_hit_on_an_already_read_gzip_response_decodes(mode: str, cache_mode: str) -> None:
    payload = json.dumps({"big": "x" * 500}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=gzip.compress(payload), headers={
            "Content-Encoding": "gzip", "Content-Type": "application/json", "Cache-Control": "max-age=60"})

    caller = Caller(mode, build(mode, ReadingTransport(handler), cache_mode=cache_mode))
    first = await caller.get("/z")
    hit = await caller.get("/z")
    assert hit.extensions["caching"]["from_cache"] and first.content == hit.content == payload
    assert int(hit.headers["content-length"]) == len(hit.content)
    await caller.close()


# -- 6. write responses carry the caching extension --------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_write_responses_carry_caching_status(mode: str, method: str) -> None:
    caller = Caller(mode, build(mode, Counter(), profile="wats", enable_throttling=False))
    await caller.get("/api/Product/P1")
    r = await caller.request(method, "/api/Product/P1")
    caching = r.extensions["caching"]
    assert caching["from_cache"] is False and caching["stored"] is False
    assert caching["lookup"] == "write" and caching["invalidated"] == 1
    await caller.close()


# -- 7. removed stays removed --------------------------------------------------------------------

class Streamed(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives only when read, as a network body does."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Any:
        yield self.body

    async def __aiter__(self) -> Any:
        yield self.body

@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("how", ["invalidate", "clear"])
async def test_an_entry_removed_while_its_body_streams_is_not_stored(mode: str, cache_mode: str, how: str) -> None:
    server = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        server(request)
        return httpx.Response(200, headers={"Cache-Control": "max-age=60"}, stream=Streamed(b'{"n": %d}' % server.count))

    stack = build(mode, handler, cache_mode=cache_mode)
    caller = Caller(mode, stack)
    request = caller.client.build_request("GET", "/api/Product/P1")
    if mode == "sync":
        response = caller.client.send(request, stream=True)
    else:
        response = await caller.client.send(request, stream=True)
    if how == "invalidate":
        stack.invalidate_cache("/api/Product")
    else:
        stack.clear_cache()
    if mode == "sync":
        response.read()
        response.close()
    else:
        await response.aread()
        await response.aclose()
    assert stack.stats()["cache"]["entries"] == 0  # removed stays removed
    again = await caller.get("/api/Product/P1")
    assert not again.extensions["caching"]["from_cache"] and server.count == 2
    await caller.close()


# -- 8. closed means closed ----------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_closed_stack_does_not_answer_from_its_cache(mode: str) -> None:
    stack = build(mode, Counter(), profile="wats")
    caller = Caller(mode, stack)
    await caller.get("/a")
    request = httpx.Request("GET", "http://test/a")
    if mode == "sync":
        stack.close()
        with pytest.raises(RuntimeError, match="transport has been closed"):
            stack.handle_request(request)
        with pytest.raises(RuntimeError, match="closed"):
            stack.layer("cache").handle_request(request)
        with pytest.raises(RuntimeError, match="closed"):
            stack.layer("cache").storage.find("k", "GET")
    else:
        await stack.aclose()
        with pytest.raises(RuntimeError, match="transport has been closed"):
            await stack.handle_async_request(request)
        with pytest.raises(RuntimeError, match="closed"):
            await stack.layer("cache").handle_async_request(request)
        with pytest.raises(RuntimeError, match="closed"):
            await stack.layer("cache").storage.get_entries("k")


# -- 9. httpx's transport options ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_transport_options_reach_the_network_transport(mode: str) -> None:
    builder = build_transport if mode == "sync" else build_async_transport
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=3)
    stack = builder(verify=False, limits=limits, retries=2, trust_env=False)
    expected = httpx.HTTPTransport if mode == "sync" else httpx.AsyncHTTPTransport
    assert type(stack.inner) is expected
    pool = stack.inner._pool
    assert (pool._max_connections, pool._max_keepalive_connections, pool._retries) == (7, 3, 2)
    with pytest.raises(ConfigError, match=r"transport options \(verify\).*with inner= given"):
        builder(inner=httpx.MockTransport(lambda r: httpx.Response(200)), verify=False)
    with pytest.raises(ConfigError, match=r"unknown flag 'verfy' \(did you mean verify\?\); allowed: .*; and, to "
                                          r"the builders, httpx's transport options: verify, cert, "):
        builder(verfy=False)
    with pytest.raises(ConfigError, match=r"verify is an option of httpx's network transport, not of a config"):
        TransportConfig.load(verify=False)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_http2_without_h2_is_refused_when_the_stack_is_built(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx takes http2=True without the h2 package and fails at the first request a server answers in
    HTTP/2 (any nginx), deep in httpcore: said when the stack is built."""
    import importlib.util

    builder = build_transport if mode == "sync" else build_async_transport
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real(name, *a))
    with pytest.raises(ConfigError, match=r"http2=True needs the h2 package, which is not installed: "
                                          r"pip install 'httpx\[http2\]'"):
        builder(http2=True)
    assert builder(http2=False).names == ["cache", "retry"]


# -- 10. clear errors at construction -------------------------------------------------------------

def test_mixing_sync_and_async_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="AsyncCacheLayer is an async layer.*HTTPTransport, a sync transport: "
                                        r"build_transport\(\) and the sync layers take it"):
        AsyncCacheLayer(httpx.HTTPTransport())
    with pytest.raises(TypeError, match="got object, not an httpx transport"):
        CacheLayer(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RetryLayer.*sync.*AsyncHTTPTransport"):
        RetryLayer(httpx.AsyncHTTPTransport())
    with pytest.raises(TypeError, match="AsyncRetryLayer.*async.*HTTPTransport"):
        AsyncRetryLayer(httpx.HTTPTransport())
    layer = CacheLayer()
    with pytest.raises(TypeError, match="CacheLayer.*sync.*AsyncHTTPTransport"):
        layer.bind(httpx.AsyncHTTPTransport())


@pytest.mark.parametrize("cls", [CacheLayer, AsyncCacheLayer, RetryLayer, AsyncRetryLayer, ThrottleLayer, AsyncThrottleLayer])
def test_a_layer_keyword_typo_is_a_config_error(cls: Any) -> None:
    with pytest.raises(ConfigError, match=r"unknown key.*allowed keys"):
        cls(tll=5)
    with pytest.raises(ConfigError, match=r"= -1"):
        cls(settings=cls(enabled=True).settings, max_size=-1) if cls in (CacheLayer, AsyncCacheLayer) else \
            cls(settings=cls(enabled=True).settings, rate=-1) if cls in (ThrottleLayer, AsyncThrottleLayer) else \
            cls(settings=cls(enabled=True).settings, max_attempts=-1)


# -- newcomer path ------------------------------------------------------------------------------------

def test_a_project_plugin_that_is_not_installed_names_its_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    from pywats_transport import PluginError, PluginManager, plugins

    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])  # nothing installed
    monkeypatch.setenv("PYWATS_TRANSPORT_PLUGINS", "circuitbreaker")
    with pytest.raises(PluginError, match=r"pip install pywats-transport-circuitbreaker"):
        build_transport(plugin_manager=PluginManager())


def test_layers_are_importable_where_users_look() -> None:
    import pywats_transport
    import pywats_transport.layers as layers

    for name in ("CacheLayer", "AsyncCacheLayer", "RetryLayer", "AsyncRetryLayer", "ThrottleLayer",
                 "AsyncThrottleLayer", "MetricsLayer", "AsyncMetricsLayer"):
        assert getattr(layers, name) is getattr(pywats_transport, name)


def test_bench_help_lists_every_suite_and_quick_misses_are_informational() -> None:
    from benchmarks import SUITE_NAMES
    from benchmarks.__main__ import SUITES
    from benchmarks.common import Row, table

    assert set(SUITES) == set(SUITE_NAMES) and len(SUITE_NAMES) >= 5
    helptext = " ".join(run_cli("bench", "--help").stdout.split())
    assert all(name in helptext for name in SUITE_NAMES)
    row = Row("s", "f", 2.0, "x", "<= 1x", passed=None, informational=True)
    assert "info" in table([row]) and "FAIL" not in table([row])
