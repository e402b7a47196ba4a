"""AsyncWATS and WATS: the transport chain from flags or config, an httpx client, and the repositories."""

from __future__ import annotations

import base64
import logging
import math
import os
import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from ..builder import build_async_transport, build_transport
from ..config import RetrySettings, TransportConfig, read_json_file, redacted
from ..errors import ConfigError
from .calls import Call, cut, scrubbed
from .errors import WATSConnectionError, WATSError
from .outbox import AsyncOutbox, Outbox
from .repositories import (
    AppRepository,
    AssetRepository,
    ProcessRepository,
    ProductionRepository,
    ProductRepository,
    ReportRepository,
    SoftwareRepository,
)

log = logging.getLogger("pywats_transport.wats")


def address_problem(address: Any) -> str | None:
    """Why ``address`` is not a WATS server's address (None when it is one): an http(s) URL naming a host,
    with no query, no fragment and no /api at its end."""
    if not isinstance(address, str) or not address:
        return "must be an http:// or https:// URL"
    if any(c.isspace() for c in address):
        return "must not contain spaces"
    try:
        url = httpx.URL(address)
    except httpx.InvalidURL as exc:
        return f"is not a URL ({exc})"
    if url.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not url.host:
        return "must name a host, as in https://wats.example.com"
    if url.query or url.fragment:
        return "must be the server's address alone, without a query or fragment"
    return api_suffix_problem(address)


def api_suffix_problem(address: str) -> str | None:
    """Why a WATS address ending with ``/api`` is wrong (None when it does not): every route starts with
    /api, so such a base asks for /api/api/... and meets a 404 on every call."""
    if not address.rstrip("/").lower().endswith("/api"):
        return None
    return f"must be the WATS server's address without /api (the routes add it): {address.rstrip('/')[:-4]!r}"


def resolve_config(config: TransportConfig | dict[str, Any] | str | os.PathLike[str] | None, flags: dict[str, Any]) -> TransportConfig:
    if isinstance(config, (str, os.PathLike)) and {"service_address", "api_token"} & set(read_json_file(config)):
        # Its keys would each be named unknown, with no word of what the file is.
        raise ConfigError(f"{os.fspath(config)} is the client service's config (client.json), not a TransportConfig "
                          "file: give its 'transport' section as config=, and its address and token as arguments")
    # A flag given (not None) overrides the profile, the config and the environment, even at the value
    # they would have given: code that says enable_throttling=True means it whatever the config says.
    changed = {k: v for k, v in flags.items() if v is not None}
    retry = changed.pop("retry", None)
    plugins = changed.pop("plugins", ())
    if isinstance(retry, RetrySettings):
        retry = retry.model_dump()
    extra: dict[str, Any] = {}
    if retry is not None:
        extra["retry"] = retry
    if plugins:
        extra["plugins"] = plugins  # a list, or one string of names, split as the environment's
    return TransportConfig.load(config, profile="wats", **changed, **extra)


class _ClientBase:
    """What AsyncWATS and WATS share: the signature, flag resolution, repositories and cache controls."""

    product: ProductRepository
    report: ReportRepository
    asset: AssetRepository
    process: ProcessRepository
    app: AppRepository
    production: ProductionRepository
    software: SoftwareRepository

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = 30.0,
        verify_ssl: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        enable_cache: bool | None = None,
        cache_ttl: float | None = None,
        cache_max_size: int | None = None,
        enable_retry: bool | None = None,
        retry: RetrySettings | dict[str, Any] | None = None,
        enable_throttling: bool | None = None,
        rate_limit: float | None = None,
        enable_metrics: bool | None = None,
        metrics_collector: Any = None,
        plugin_context: dict[str, Any] | None = None,
        plugins: Sequence[str] = (),
        config: TransportConfig | dict[str, Any] | str | os.PathLike[str] | None = None,
        transport: Any = None,
        outbox: str | os.PathLike[str] | None = None,
    ) -> None:
        if (problem := address_problem(base_url)) is not None:
            raise ValueError(f"base_url {problem}, got {base_url!r}")
        if not token:
            raise ValueError("token must be a non-empty WATS API token")
        timeout = checked_timeout(timeout)
        flags = dict(enable_cache=enable_cache, cache_ttl=cache_ttl, cache_max_size=cache_max_size,
                     enable_retry=enable_retry, retry=retry, enable_throttling=enable_throttling,
                     rate_limit=rate_limit, enable_metrics=enable_metrics,
                     plugins=plugins if isinstance(plugins, str) else tuple(plugins))
        self.base_url = base_url.rstrip("/")
        self.config = resolve_config(config, flags)
        headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self._secrets = secrets_of(token)
        if transport is not None and verify_ssl is not True:
            raise ValueError("verify_ssl applies to the network transport the client makes, and transport= replaces "
                             "it: give the certificate check to that transport (httpx.HTTPTransport(verify=...))")
        self.transport = self._build_stack(self.config, transport, tls_verify(verify_ssl), metrics_collector,
                                           plugin_context)
        self.metrics_collector = getattr(self.transport.get_layer("metrics"), "collector", metrics_collector)
        self._http = self._build_client(headers, timeout)
        run = self._run
        self.product = ProductRepository(run)
        self.report = ReportRepository(run)
        self.asset = AssetRepository(run)
        self.process = ProcessRepository(run)
        self.app = AppRepository(run)
        self.production = ProductionRepository(run)
        self.software = SoftwareRepository(run)
        self._outbox: Any = self._build_outbox(outbox) if outbox is not None else None

    def _build_outbox(self, folder: str | os.PathLike[str]) -> Any:
        raise NotImplementedError

    @property
    def outbox(self) -> Any:
        """Durable report submission (``outbox=`` folder): ``submit(report)`` -> sent or queued, ``drain(timeout)``."""
        if self._outbox is None:
            raise RuntimeError(
                f"this {type(self).__name__} has no outbox: pass outbox='<folder>' (the client service's queue "
                "folder layout) to hand reports over durably"
            )
        return self._outbox

    def _build_stack(self, config: TransportConfig, transport: Any, verify_ssl: bool | ssl.SSLContext, collector: Any,
                     plugin_context: dict[str, Any] | None) -> Any:
        raise NotImplementedError

    def _build_client(self, headers: dict[str, str], timeout: float | httpx.Timeout) -> Any:
        raise NotImplementedError

    def _run(self, call: Call[Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def from_env(cls, **kwargs: Any) -> Any:
        """``WATS_BASE_URL`` and ``WATS_AUTH_TOKEN`` from the environment, flags from ``kwargs``."""
        return cls(*_env_credentials(), **kwargs)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Credentials from the environment, the transport chain from a TransportConfig JSON file."""
        return cls(*_env_credentials(), config=path, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={redacted(self.base_url)!r}, token=***)"

    def _connection_error(self, call: Call[Any], exc: httpx.HTTPError) -> WATSError:
        # The message names the call, not the URL with its query, and never the headers; and why, for a
        # refused connection, an unknown host and an untrusted certificate each want their own remedy.
        why = cut(scrubbed(redacted(_first_cause(exc)), self._secrets))
        message = f"{call.method} {call.route} failed: {type(exc).__name__}" + (f": {why}" if why else "")
        if "CERTIFICATE_VERIFY_FAILED" in why:
            message += ("; the server's certificate is not trusted on this machine: give verify_ssl the CA "
                        "certificate (a PEM file or folder) or an ssl.SSLContext, or set SSL_CERT_FILE")
        return WATSConnectionError(message, route=call.route, method=call.method)

    # Cache controls, forwarded to the stack.
    def clear_cache(self) -> int:
        return self.transport.clear_cache()  # type: ignore[no-any-return]

    def invalidate_cache(self, prefix: str) -> int:
        return self.transport.invalidate_cache(prefix)  # type: ignore[no-any-return]


def _first_cause(exc: BaseException) -> str:
    """The words of the system's error that began it, else of ``exc``: httpx's async path says "All
    connection attempts failed" over the refused connection that was the reason."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 10:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return next((str(e) for e in reversed(chain) if isinstance(e, OSError) and str(e)), str(exc))


def checked_timeout(timeout: Any) -> float | httpx.Timeout:
    """Seconds for every phase of a request, or an ``httpx.Timeout`` for each its own (a short ``connect``
    finds a host that does not answer at all sooner)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout < math.inf:
        return float(timeout)
    raise ValueError(f"timeout must be seconds > 0 or an httpx.Timeout (httpx.Timeout(30, connect=5); "
                     f"httpx.Timeout(None): no limit), got {timeout!r}")


def tls_verify(verify_ssl: Any) -> bool | ssl.SSLContext:
    """``verify_ssl`` as httpx takes it: True, False, an ``ssl.SSLContext``, or a CA certificate file or
    folder (a factory's own CA) made into a context here, so that a wrong path is named at once."""
    if isinstance(verify_ssl, (bool, ssl.SSLContext)):
        return verify_ssl
    if not isinstance(verify_ssl, (str, os.PathLike)) or not os.fspath(verify_ssl):
        raise ValueError("verify_ssl must be True, False, a CA certificate file or folder, or an ssl.SSLContext, "
                         f"got {verify_ssl!r}")
    path = os.path.expanduser(os.fspath(verify_ssl))
    try:
        return ca_context(path)
    except ValueError as exc:
        raise ValueError(f"verify_ssl {path!r} {exc}") from None


CA_FILES = (".pem", ".crt", ".cer")


def ca_context(path: str) -> ssl.SSLContext:
    """A context trusting the CA certificates of a PEM file, or of each such file in a folder (by name, not
    only as OpenSSL's ``c_rehash`` names them, which a folder of certificates copied in is not); a
    ValueError saying why not."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(entry.path for entry in os.scandir(path)
                       if entry.name.lower().endswith(CA_FILES) and entry.is_file())
        if not files:
            raise ValueError(f"cannot be used as CA certificates: the folder holds no {', '.join(CA_FILES)} file")
    context = None
    for file in files:
        try:
            if context is None:
                context = ssl.create_default_context(cafile=file)
            else:
                context.load_verify_locations(cafile=file)
        except (OSError, ssl.SSLError) as exc:
            where = f"{os.path.basename(file)}: " if file != path else ""
            raise ValueError(f"cannot be used as CA certificates: {where}"
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    assert context is not None
    return context


MIN_MASKED = 4


def secrets_of(token: str) -> tuple[str, ...]:
    """What an error message must not show of a token: the token, and when it is Basic credentials
    (base64 of ``user:password``), those decoded and the password alone; longest first, so that a part
    is masked only where the whole is not."""
    found = {token}
    try:
        decoded = base64.b64decode(token, validate=True).decode()
    except ValueError:  # not base64, or not text (UnicodeDecodeError is a ValueError)
        decoded = ""
    if decoded.isprintable() and decoded:
        found.add(decoded)
        _, colon, password = decoded.partition(":")
        if colon:
            found.add(password)
    # One shorter than four characters would mask ordinary words ("No*** Found" for a test token "t"),
    # and hides nothing that could not be guessed.
    return tuple(sorted((s for s in found if len(s) >= MIN_MASKED), key=len, reverse=True))


class AsyncWATS(_ClientBase):
    """Async WATS client. ``async with AsyncWATS(url, token) as api: await api.product.get("PN-1")``.

    ``transport`` replaces the innermost network transport (an ``httpx.AsyncBaseTransport``).
    """

    def _build_stack(self, config: TransportConfig, transport: Any, verify_ssl: bool | ssl.SSLContext, collector: Any,
                     plugin_context: dict[str, Any] | None) -> Any:
        inner = transport if transport is not None else httpx.AsyncHTTPTransport(verify=verify_ssl)
        return build_async_transport(config, inner=inner, metrics_collector=collector, plugin_context=plugin_context)

    def _build_client(self, headers: dict[str, str], timeout: float | httpx.Timeout) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, transport=self.transport, headers=headers, timeout=timeout)

    def _build_outbox(self, folder: str | os.PathLike[str]) -> AsyncOutbox:
        return AsyncOutbox(folder, self.report.submit)

    async def _run(self, call: Call[Any]) -> Any:
        request = call.request(self._http)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._connection_error(call, exc) from None
        return call.parse(response, self._secrets)

    async def aclear_cache(self) -> int:
        """As ``clear_cache()``, without blocking the event loop on a shared cache (Redis)."""
        return await self.transport.aclear_cache()  # type: ignore[no-any-return]

    async def ainvalidate_cache(self, prefix: str) -> int:
        """As ``invalidate_cache(prefix)``, without blocking the event loop on a shared cache (Redis)."""
        return await self.transport.ainvalidate_cache(prefix)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._outbox is not None:
            await self._outbox.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncWATS:
        if self._outbox is not None:
            await self._outbox.start()  # what an earlier run left queued goes out now
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class WATS(_ClientBase):
    """Sync WATS client, same flags and repositories as :class:`AsyncWATS`.

    ``transport`` replaces the innermost network transport (an ``httpx.BaseTransport``).
    """

    def _build_stack(self, config: TransportConfig, transport: Any, verify_ssl: bool | ssl.SSLContext, collector: Any,
                     plugin_context: dict[str, Any] | None) -> Any:
        inner = transport if transport is not None else httpx.HTTPTransport(verify=verify_ssl)
        return build_transport(config, inner=inner, metrics_collector=collector, plugin_context=plugin_context)

    def _build_client(self, headers: dict[str, str], timeout: float | httpx.Timeout) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, transport=self.transport, headers=headers, timeout=timeout)

    def _build_outbox(self, folder: str | os.PathLike[str]) -> Outbox:
        return Outbox(folder, self.report.submit)

    def _run(self, call: Call[Any]) -> Any:
        request = call.request(self._http)
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._connection_error(call, exc) from None
        return call.parse(response, self._secrets)

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
        self._http.close()

    def __enter__(self) -> WATS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_credentials() -> tuple[str, str]:
    base_url, token = os.environ.get("WATS_BASE_URL"), os.environ.get("WATS_AUTH_TOKEN")
    missing = [name for name, value in (("WATS_BASE_URL", base_url), ("WATS_AUTH_TOKEN", token)) if not value]
    if missing:
        raise ValueError(f"environment variable(s) {', '.join(missing)} must be set")
    if (problem := address_problem(base_url)) is not None:
        raise ValueError(f"environment variable WATS_BASE_URL {problem}, got {base_url!r}")
    return str(base_url), str(token)
