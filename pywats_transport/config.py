"""Transport configuration: one pydantic section per built-in layer plus plugin settings.

Sources, later ones winning: defaults, a JSON file or dict, environment variables
(``PYWATS_TRANSPORT_<SECTION>__<FIELD>``), keyword flags.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

ENV_PREFIX = "PYWATS_TRANSPORT_"
#: The plugin manager's process-wide switches: they share the prefix but are not config keys.
ENV_DISABLE_AUTOLOAD = ENV_PREFIX + "DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = ENV_PREFIX + "BLOCK_PLUGINS"
_NOT_CONFIG = frozenset({ENV_DISABLE_AUTOLOAD, ENV_BLOCK})
_SECRET_HINTS = ("token", "password", "secret", "authorization", "api_key")
#: calls to Redis a process's cache (or fleet rate) has in flight at once, unless configured
REDIS_MAX_CONNECTIONS = 32


def _checked_redis_url(value: str) -> str:
    from .caching.redis_connect import check_url  # not at import: the caching package imports this module

    return check_url(value)


#: A Redis URL, checked where it is configured (the allowed forms are in :mod:`.caching.redis_connect`).
RedisURL = Annotated[str, AfterValidator(_checked_redis_url)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        """A layer's section may be just its switch: ``"retry": false``, as the flag ``retry=False``."""
        if "enabled" not in cls.model_fields:
            return value
        if (switch := as_switch(value)) is not None:
            return {"enabled": switch}
        if not isinstance(value, (Mapping, BaseModel)):
            raise ValueError("must be true, false or an object of its settings")
        return value


_SWITCH = TypeAdapter(bool)


def as_switch(value: Any) -> bool | None:
    """``value`` as a switch, read as pydantic reads a bool (``False``, ``0``, ``no``, ``on``: what an
    environment variable gives), when it is one; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = value.strip()
    elif not isinstance(value, int):
        return None
    try:
        return _SWITCH.validate_python(value)
    except ValidationError:
        return None


class PluginSettings(Section):
    """The base for a plugin's settings model: unknown keys are errors (naming the allowed ones), as in
    the built-in sections, and assignments are validated."""


class CacheSettings(Section):
    enabled: bool = Field(True, description="Cache GET/HEAD responses.")
    ttl: float = Field(300.0, ge=0, description="Seconds an entry is served (mode `ttl`), or the longest it is kept (mode `rfc`).")
    max_size: int = Field(1000, ge=1, description="Entries kept by the memory storage (and the near cache) before "
                          "LRU eviction.")
    max_bytes: int | None = Field(256 * 1024 * 1024, ge=1, description="Bytes of response bodies the memory "
                                  "storage (and the near cache) keeps before LRU eviction, and the most the SQLite "
                                  "file holds; null: entries alone bound the memory storage, nothing the file.")
    mode: Literal["ttl", "rfc"] = Field(
        "rfc",
        description="`rfc`: RFC 9111 (freshness and revalidation as the server says); `ttl`: cache 2xx GET/HEAD for "
        "`ttl` seconds whatever the server's freshness headers say (variants by `Vary` are still kept apart).",
    )
    storage: Literal["memory", "sqlite", "redis"] = Field("memory", description="Where entries live.")
    sqlite_path: str = Field("pywats_transport_cache.db", description="Database file for `storage: sqlite` (a bare "
                             "name goes under .cache/hishel/; `~` is the user's home; relative to the current folder, "
                             "or in the client service's client.json to the file's folder).")
    redis_url: RedisURL = Field("redis://127.0.0.1:6379/0", description="Server for `storage: redis` when set here; "
                           "else `redis.url` (the forms are listed there).")
    redis_timeout: float = Field(0.25, gt=0, description="Longest a request waits on Redis (seconds) before it "
                                 "goes to the network.")
    near_cache: bool = Field(False, description="`storage: redis`: keep entries in process memory too (hits at "
                             "memory speed), dropped when any process invalidates them (Redis pub/sub).")
    near_ttl: float = Field(5.0, gt=0, description="Longest a near-cache entry answers without Redis (seconds): the "
                            "bound on staleness should an invalidation message be lost.")
    redis_retry_after: float = Field(5.0, ge=0, description="After Redis failed, seconds it is skipped before the "
                                     "next try (requests go to the network meanwhile).")
    redis_max_connections: int = Field(REDIS_MAX_CONNECTIONS, ge=1, description="Calls to Redis this process's cache has in flight at "
                                       "once, and so about the connections it opens; a request beyond them waits "
                                       "for one (up to 1 s, or `redis_timeout` if longer), then skips Redis.")
    identity_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "X-Api-Key"],
        description="Request headers whose value (hashed) is part of the cache key.",
    )
    cookie_identity: Literal["fallback", "always", "never"] = Field(
        "fallback",
        description="When `Cookie` is part of the key: `fallback` only for requests that carry none of "
        "`identity_headers` (cookie-authenticated apps; rotating load-balancer cookies then do not defeat caching).",
    )
    store_no_store: bool = Field(
        False, description="Mode `ttl`: store responses marked `Cache-Control: no-store` too (the WATS profile does)."
    )
    invalidate_on_write: bool = Field(True, description="A successful POST/PUT/PATCH/DELETE drops entries under its path.")
    coalesce: bool = Field(True, description="Concurrent identical lookups wait for the first one instead of all missing.")
    coalesce_timeout: float = Field(10.0, gt=0, description="Longest a coalesced request waits for the first one (seconds).")
    stale_if_error: float = Field(
        0.0, ge=0, description="Seconds past freshness an entry still answers a GET when the request below fails "
        "(connection refused, timeout, 5xx after retries, an open circuit breaker), marked stale (RFC 5861).",
    )
    stale_while_revalidate: float = Field(
        0.0, ge=0, description="Seconds past freshness an entry is served at once while one background request "
        "per key refreshes it (RFC 5861).",
    )

    @field_validator("sqlite_path")
    @classmethod
    def _database_file(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a database file, as in 'pywats_transport_cache.db'")
        return os.path.expanduser(value)  # else a folder named "~" is made in the current one

    @field_validator("near_cache")
    @classmethod
    def _near_cache_needs_redis(cls, value: bool, info: ValidationInfo) -> bool:
        # Set with another storage it did nothing, silently: most likely `storage: redis` was forgotten.
        storage = info.data.get("storage", "redis")
        if value and storage != "redis":
            raise ValueError(f"a near cache keeps the Redis storage's entries in process memory: it needs storage "
                             f"'redis', and storage is {storage!r}")
        return value


class RetrySettings(Section):
    enabled: bool = Field(True, description="Retry failed attempts.")
    max_attempts: int = Field(3, ge=1, description="Attempts in total, the first included.")
    backoff_base: float = Field(0.5, ge=0, description="Seconds before the first retry; doubles each retry.")
    backoff_max: float = Field(30.0, ge=0, description="Upper bound of one backoff, Retry-After included.")
    jitter: Literal["full", "equal", "none"] = Field("full", description="Randomisation of the backoff.")
    statuses: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504], description="Statuses retried.")
    methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
        description="Idempotent methods, retried after the request may have reached the server.",
    )
    retry_connect_errors: bool = Field(True, description="Retry requests that never reached the server, any method.")
    retry_read_timeouts: bool = Field(True, description="Retry read timeouts (idempotent methods only).")
    respect_retry_after: bool = Field(True, description="Wait as the server's Retry-After says (capped by backoff_max).")
    deadline: float | None = Field(None, gt=0, description="Total seconds for all attempts.")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="Retries may add at most this share of recent requests.")
    budget_floor: int = Field(10, ge=0, description="Retries always allowed per budget window.")
    budget_window: float = Field(10.0, gt=0, description="Seconds over which the budget counts requests.")

    @field_validator("statuses")
    @classmethod
    def _statuses_are_http(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if not 100 <= s <= 599]
        if bad:
            raise ValueError(f"statuses must be HTTP status codes 100-599, got {bad}")
        return value

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]


class ThrottleSettings(Section):
    enabled: bool = Field(False, description="Rate-limit outgoing requests (off until configured; the WATS profile turns it on).")
    rate: float = Field(10.0, gt=0, description="Requests per second (token refill rate).")
    burst: int = Field(20, ge=1, description="Bucket size: requests allowed at once after idling.")
    max_concurrency: int | None = Field(None, ge=1, description="Cap on requests in flight.")
    per_host: bool = Field(True, description="One bucket per host instead of one for all.")
    max_wait: float | None = Field(None, ge=0, description="Fail fast instead of waiting longer than this (seconds).")
    adaptive: bool = Field(True, description="Slow down a host after 429/503 with Retry-After, recover gradually.")
    backend: Literal["local", "redis"] = Field(
        "local", description="`local`: a token bucket in this process; `redis`: one rate for every process sharing "
        "`redis_url` (a token bucket in Redis, pyrate-limiter's GCRA: `burst` at once and `rate` per second for the "
        "fleet), and a Retry-After seen by one holds the host for all.",
    )
    redis_url: RedisURL = Field("redis://127.0.0.1:6379/0", description="Server for `backend: redis` when set here; "
                           "else `redis.url` (the forms are listed there).")
    redis_timeout: float = Field(0.25, gt=0, description="Longest a request waits on Redis for a token (seconds).")
    redis_retry_after: float = Field(5.0, ge=0, description="After Redis failed, seconds the local bucket is used "
                                     "before Redis is tried again.")
    redis_max_connections: int = Field(REDIS_MAX_CONNECTIONS, ge=1, description="Calls to Redis this process's fleet rate has in "
                                       "flight at once, and so about the connections it opens; a request beyond "
                                       "them waits for one (up to 1 s, or `redis_timeout` if longer), then takes "
                                       "the local bucket.")
    expected_processes: int = Field(1, ge=1, description="Processes sharing the fleet rate, at least: while Redis "
                                    "is down, each uses `rate / N` and `burst / N` (at least 1) locally, N being "
                                    "this or the stations the fleet counted taking turns in the last 5 minutes, "
                                    "whichever is more.")
    local_rate: float | None = Field(None, gt=0, description="`backend: redis`: the rate each process uses while "
                                     "Redis is down, instead of its share of `rate`.")
    local_burst: int | None = Field(None, ge=1, description="`backend: redis`: the burst each process uses while "
                                    "Redis is down, instead of its share of `burst`.")
    retry_after_max: float = Field(
        30.0, ge=0, description="Longest a server's Retry-After holds a host back (seconds; the retry layer's default backoff_max)."
    )
    min_rate: float = Field(0.5, gt=0, description="Lowest rate the adaptive mode slows a host to (a host configured "
                            "below it keeps its own rate).")
    fleet_slowdown_seconds: float = Field(
        10.0, gt=0, description="`backend: redis`: when a station's adaptive mode slows a host, the fleet's rate for "
        "it halves, and wins back one halving after this many seconds without another.",
    )


class MetricsSettings(Section):
    enabled: bool = Field(False, description="Record OpenTelemetry HTTP client metrics (opt-in).")
    provider: Literal["own", "global"] = Field(
        "own", description="`own`: a MeterProvider of ours with Prometheus exposition (/metrics); `global`: the "
        "application's global MeterProvider, exported by its own pipeline (OTLP, ...). A `metrics_collector` given "
        "in code wins.",
    )
    excluded_urls: str = Field(
        "", description="Comma-separated regular expressions of URLs not recorded (as OTEL_PYTHON_HTTPX_EXCLUDED_URLS, "
        "which applies when this is empty).",
    )
    record_body_sizes: bool = Field(
        False,
        description="Also record http.client.request/response.body.size where the length is known. Opt-in: these "
        "histograms are experimental in the OpenTelemetry conventions and cost one more measurement per request.",
    )


class RedisSettings(Section):
    """The fleet's Redis, in one place: the cache (`cache.storage: redis`) and the fleet rate
    (`throttle.backend: redis`) use it unless their own `redis_*` settings say otherwise."""

    url: RedisURL = Field("redis://127.0.0.1:6379/0", description="`redis://`, `rediss://` (TLS; certificates as URL "
                     "options, `?ssl_ca_certs=/path/ca.pem`), `unix://`; a Redis Cluster's nodes, "
                     "`redis+cluster://host:port,host:port` (`rediss+cluster://`); or Redis Sentinel, "
                     "`redis+sentinel://host:port,host:port/service` (`rediss+sentinel://`). Password: in the URL "
                     "or the environment, REDIS_PASSWORD; never shown.")
    timeout: float = Field(0.25, gt=0, description="Longest a request waits on Redis (seconds) before the cache goes "
                           "to the network and the rate to the local share.")
    retry_after: float = Field(5.0, ge=0, description="After Redis failed, seconds it is skipped before it is tried "
                               "again.")
    max_connections: int = Field(REDIS_MAX_CONNECTIONS, ge=1, description="Calls to Redis a process's cache (and its fleet rate) has in "
                                 "flight at once, and so about the connections it opens: a burst of requests waits "
                                 "for them instead of opening one each.")


#: A layer's own Redis settings, and the shared one each falls back to when the layer does not set it.
REDIS_FIELDS: dict[str, str] = {"redis_url": "url", "redis_timeout": "timeout", "redis_retry_after": "retry_after",
                                 "redis_max_connections": "max_connections"}

BUILTIN_SECTIONS: dict[str, type[Section]] = {
    "metrics": MetricsSettings,
    "cache": CacheSettings,
    "retry": RetrySettings,
    "throttle": ThrottleSettings,
}

#: httpx.HTTPTransport / AsyncHTTPTransport options the builders pass to the network transport they create.
#: (httpx ignores ``Client(verify=, http2=, proxy=, ...)`` once ``transport=`` is given: they go here.)
TRANSPORT_OPTIONS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy", "uds",
                     "local_address", "retries", "socket_options")

#: Named sets of defaults, applied beneath a config's own values. A profile is data, not a code path.
PROFILES: dict[str, dict[str, Any]] = {
    # What any httpx app can take unseen: HTTP-correct caching, retry of idempotent requests only,
    # no throttling until asked, no metrics.
    "generic": {},
    # The WATS clients and the client service: the seed plan's caching (TTL 300 s, 1000 entries, cached
    # whatever the server's freshness headers say) and throttling on.
    "wats": {
        # A station keeps testing through a WATS outage: lookups fall back to what it last knew for a week.
        "cache": {"mode": "ttl", "ttl": 300.0, "max_size": 1000, "store_no_store": True, "stale_if_error": 604800.0},
        "throttle": {"enabled": True},
    },
}

# pyWATS-style flag names accepted by build_transport(**flags) and the WATS clients.
FLAG_ALIASES: dict[str, tuple[str, str]] = {
    "enable_cache": ("cache", "enabled"),
    "cache_ttl": ("cache", "ttl"),
    "cache_max_size": ("cache", "max_size"),
    "enable_retry": ("retry", "enabled"),
    "enable_throttling": ("throttle", "enabled"),
    "rate_limit": ("throttle", "rate"),
    "enable_metrics": ("metrics", "enabled"),
}


class TransportConfig(BaseModel):
    """The whole transport chain: built-in sections, plugins to enable, and their settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings())
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings())
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings())
    throttle: ThrottleSettings = Field(default_factory=lambda: ThrottleSettings())
    redis: RedisSettings = Field(default_factory=lambda: RedisSettings())
    plugins: list[str] = Field(default_factory=list, description="Names of plugin layers to enable.")
    plugin_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Settings per plugin name, validated by the plugin's own model."
    )
    order: list[str] | None = Field(
        None, description="The enabled layers, outermost first, overriding positions and before/after (every "
        "enabled layer once).",
    )
    positions: dict[str, int] = Field(
        default_factory=dict, description="Positions overriding the layers' own, by layer name (lower is further out).",
    )
    blocked_plugins: list[str] = Field(
        default_factory=list, description="Plugins this config refuses to enable (the process-wide block is "
        "PYWATS_TRANSPORT_BLOCK_PLUGINS).",
    )
    profile: str = Field(
        "generic",
        description="The defaults beneath everything else: `generic` (any httpx app) or `wats` (the WATS clients "
        "and the client service: ttl caching whatever the server says, throttling on).",
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    # -- loaders -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> TransportConfig:
        return _validate(cls, dict(data), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TransportConfig:
        return cls.from_dict(read_json_file(path), source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, base: Mapping[str, Any] | None = None) -> TransportConfig:
        data = deep_merge(dict(base or {}), env_overrides(ENV_PREFIX, os.environ if environ is None else environ))
        return _validate(cls, data, "environment")

    @classmethod
    def from_flags(cls, base: TransportConfig | Mapping[str, Any] | None = None, **flags: Any) -> TransportConfig:
        data = base.model_dump() if isinstance(base, TransportConfig) else dict(base or {})
        return _validate(cls, deep_merge(data, flags_to_dict(flags)), "flags")

    @classmethod
    def load(
        cls,
        config: TransportConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        profile: str | None = None,
        **flags: Any,
    ) -> TransportConfig:
        """Resolve any accepted config form, then environment variables, then flags.

        ``profile`` names a set of defaults applied beneath all of them (see :data:`PROFILES`);
        a ``profile`` key in the config, the environment or the flags wins over the argument.
        The result remembers where each value came from (:meth:`sources`).
        """
        given_flags: dict[str, Any] = {}
        if isinstance(config, TransportConfig):
            data: dict[str, Any] = config.model_dump(exclude_unset=True)
            source = "config"
            inherited = dict(config._sources)
            # A loaded config's flags stay above the environment when it is loaded again (as every builder
            # does): re-applied beneath, the environment undid them while the config still showed them.
            data, given_flags = _split_paths(data, {path for path, where in inherited.items() if where == "flags"})
        elif isinstance(config, (str, os.PathLike)):
            data, source, inherited = read_json_file(config), f"file {config}", {}
        elif config is None or isinstance(config, Mapping):
            data, source, inherited = dict(config or {}), "config" if config else "", {}
        else:
            raise TypeError(f"config must be a TransportConfig, a dict or the path of a JSON file, "
                            f"got {type(config).__name__}")
        env, env_names = env_overrides_named(ENV_PREFIX, os.environ if environ is None else environ)
        # `"retry": false` switches a layer, as the flag retry=False does: made {"enabled": false} before
        # merging, so that `"cache": true` keeps the profile's cache settings rather than replacing them.
        data, env = _switches(data), _switches(env)
        env_names.update({f"{key}.enabled": env_names[key] for key in BUILTIN_SECTIONS if key in env_names})
        flag_data = flags_to_dict(flags)
        chosen = flag_data.get("profile") or env.get("profile") or data.get("profile") or profile or "generic"
        if chosen not in PROFILES:
            raise ConfigError(f"profile = {chosen!r}: unknown profile; allowed: {', '.join(PROFILES)}")
        layers = [
            (f"profile {chosen}", PROFILES[chosen], None),
            (source, data, None),
            ("environment", env, env_names),
            ("flags", given_flags, None),
            ("flags", flag_data, None),
        ]
        merged: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for label, layer, names in layers:
            merged = deep_merge(merged, layer)
            for path in _leaf_paths(layer):
                sources[path] = inherited.get(path, label) if layer is data and inherited else label
                if names is not None and path in names:
                    sources[path] = f"environment {names[path]}"
        merged["profile"] = chosen
        cfg = _validate(cls, merged, source, sources)
        cfg._sources = sources
        return cfg

    def sources(self) -> dict[str, str]:
        """Where each value that is not a model default came from, by dotted path (``cache.ttl``)."""
        return dict(self._sources)

    def source_of(self, path: str) -> str:
        """Where a value came from; a layer's Redis setting it did not set itself names the shared one."""
        section, _, key = path.partition(".")
        if path not in self._sources and section in BUILTIN_SECTIONS and key in REDIS_FIELDS:
            if key not in getattr(self, section).model_fields_set:
                shared = f"redis.{REDIS_FIELDS[key]}"
                return f"{shared}, {self._sources.get(shared, 'default')}"
        return self._sources.get(path, "default")

    def effective(self, name: str) -> Any:
        """A built-in layer's section as the layer gets it: the Redis settings it does not set itself come
        from the shared ``redis`` section."""
        section = getattr(self, name)
        inherited = {key: getattr(self.redis, shared) for key, shared in REDIS_FIELDS.items()
                     if key in type(section).model_fields and key not in section.model_fields_set}
        return section.model_copy(update=inherited) if inherited else section

    def enabled_names(self) -> list[str]:
        return [name for name in BUILTIN_SECTIONS if getattr(self, name).enabled] + list(self.plugins)


def _switches(layer: dict[str, Any]) -> dict[str, Any]:
    return {key: {"enabled": switch} if key in BUILTIN_SECTIONS and (switch := as_switch(value)) is not None
            else value for key, value in layer.items()}


def read_json_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        content = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        # From bytes, JSON's own detection reads UTF-8 with or without a byte order mark, and UTF-16 and
        # UTF-32, as Windows editors and PowerShell save text.
        data = json.loads(content)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object, got {type(data).__name__}")
    # Keys starting with "_" are comments (JSON has none of its own).
    return strip_comments(data)


def strip_comments(data: dict[str, Any]) -> dict[str, Any]:
    return {k: strip_comments(v) if isinstance(v, dict) else v for k, v in data.items() if not k.startswith("_")}


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """``PREFIX_CACHE__TTL=60`` -> ``{"cache": {"ttl": 60}}``; values are JSON when they parse as JSON."""
    return env_overrides_named(prefix, environ)[0]


def env_overrides_named(prefix: str, environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Like :func:`env_overrides`, plus the variable behind each dotted path (for error messages)."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or name in _NOT_CONFIG:
            continue
        path = [part.lower() for part in name[len(prefix):].split("__") if part]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if ".".join(path) in _list_fields():  # comma-separated, or a JSON list; one value is a list of one
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif value is not None and not isinstance(value, list):
                value = [value]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        names[".".join(path)] = name
    return out, names


@functools.cache
def _list_fields() -> frozenset[str]:
    """The dotted paths of the config's list-valued fields."""
    models: list[tuple[str, type[BaseModel]]] = [("", TransportConfig), ("redis.", RedisSettings)]
    models += [(f"{name}.", section) for name, section in BUILTIN_SECTIONS.items()]
    return frozenset(prefix + name for prefix, model in models for name, field in model.model_fields.items()
                     if any(t is list for t in (get_origin(field.annotation), *map(get_origin, get_args(field.annotation)))))


def _split_paths(data: Mapping[str, Any], paths: set[str], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` without the leaves at ``paths`` (dotted), and those leaves alone."""
    rest: dict[str, Any] = {}
    picked: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in paths:
            picked[key] = value
        elif isinstance(value, Mapping) and value and any(p.startswith(path + ".") for p in paths):
            rest[key], picked[key] = _split_paths(value, paths, path + ".")
            if not picked[key]:
                del picked[key]
        else:
            rest[key] = value
    return rest, picked


def _leaf_paths(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_leaf_paths(value, path + "."))
        else:
            out.append(path)
    return out


def flags_to_dict(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Turn keyword flags into nested config data.

    Accepted: a section (``cache={"ttl": 60}``, ``cache=False``, a settings model),
    ``<section>_<field>`` (``retry_max_attempts=5``), the pyWATS names in
    :data:`FLAG_ALIASES`, ``plugins`` and ``plugin_settings``.
    """
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None and key in FLAG_ALIASES:
            continue  # "not given" for optional pyWATS-style flags such as rate_limit=None
        if key in BUILTIN_SECTIONS:
            if isinstance(value, bool):
                value = {"enabled": value}
            elif isinstance(value, BaseModel):
                value = value.model_dump()
            out = deep_merge(out, {key: value})
        elif key in ("plugins", "blocked_plugins", "order"):
            if isinstance(value, str):  # one name, or several comma-separated as in the environment
                value = [v.strip() for v in value.split(",") if v.strip()]
            out[key] = list(value) if value is not None else None
        elif key in ("plugin_settings", "positions"):
            out[key] = dict(value)
        elif key == "profile":
            out[key] = value
        elif key == "redis":
            out = deep_merge(out, {key: value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value})
        elif key.startswith("redis_") and key[len("redis_"):] in RedisSettings.model_fields:
            out = deep_merge(out, {"redis": {key[len("redis_"):]: value}})
        elif key in FLAG_ALIASES:
            section, field = FLAG_ALIASES[key]
            out = deep_merge(out, {section: {field: value}})
        elif key in TRANSPORT_OPTIONS:
            raise ConfigError(f"{key} is an option of httpx's network transport, not of a config: give it to "
                              "build_transport() / build_async_transport(), which pass it to the transport they make")
        else:
            owner = next((s for s in BUILTIN_SECTIONS if key.startswith(s + "_")), None)
            if owner is None:
                allowed = sorted([*BUILTIN_SECTIONS, "redis", "plugins", "plugin_settings", "profile", "order",
                                  "positions", "blocked_plugins", *FLAG_ALIASES])
                near = difflib.get_close_matches(key, [*allowed, *TRANSPORT_OPTIONS], n=1)
                raise ConfigError(
                    f"unknown flag {key!r}" + (f" (did you mean {near[0]}?)" if near else "") + f"; allowed: "
                    f"{', '.join(allowed)} or <section>_<field> (for example cache_ttl, retry_max_attempts); and, "
                    f"to the builders, httpx's transport options: {', '.join(TRANSPORT_OPTIONS)}"
                )
            out = deep_merge(out, {owner: {key[len(owner) + 1:]: value}})
    return out


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def _password_masked(match: re.Match[str]) -> str:
    """A URL with its password as ``***``. The credentials end at the last ``@`` before the query, as
    ``urllib.parse`` (and so redis-py) reads them: a password with an ``@`` or a ``/`` left unencoded
    is masked whole, not up to its first ``@``."""
    url = match.group(0)
    scheme, _, rest = url.partition("://")
    cut = rest.find("?") % (len(rest) + 1)  # the query's start, or the end
    if "@" not in rest[:cut]:  # a '?' left in the password: its '@' comes before the query's first '='
        cut = max(cut, rest.rfind("@", 0, rest.find("=") % (len(rest) + 1)) + 1)
    userinfo, at, hosts = rest[:cut].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}{rest[cut:]}"


def redacted(value: Any, key: str = "") -> Any:
    """Settings as they may be shown (``stack``, ``/health/details``): a secret-named key's value and the
    password in a URL (``redis://user:***@host``) masked, everything else as it is."""
    if isinstance(value, Mapping):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if isinstance(value, str) and value:
        if _is_secret((key,)):
            return "***"
        return _URL.sub(_password_masked, value)
    return value


def _is_secret(loc: tuple[Any, ...]) -> bool:
    return any(isinstance(part, str) and any(h in part.lower() for h in _SECRET_HINTS) for part in loc)


def _secret_fields(model: type[BaseModel]) -> set[str]:
    """Names of the model's fields typed as secrets (``SecretStr``), whose values must never be shown."""
    from pydantic import SecretBytes, SecretStr

    return {name for name, f in model.model_fields.items() if f.annotation in (SecretStr, SecretBytes,
                                                                               SecretStr | None, SecretBytes | None)}


def _shown(value: Any, loc: tuple[Any, ...], secrets: set[str]) -> str:
    """A rejected value as an error message may show it: scalars only, secrets never."""
    if _is_secret(loc) or (loc and loc[0] in secrets):
        return "***"
    if isinstance(value, (dict, list, tuple, set)):
        return f"<{type(value).__name__}>"
    text = repr(redacted(value))
    return text if len(text) <= 80 else text[:77] + "..."


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str | None,
                              sources: Mapping[str, str] | None = None,
                              data: Mapping[str, Any] | None = None) -> ConfigError:
    """One :class:`ConfigError` for every problem. No secret value is ever shown: not the values of secret
    fields, not the value of an unknown key, and not a rejected value that holds a secret given elsewhere
    in ``data`` (a token pasted into the wrong field)."""
    problems = []
    secrets = _secret_fields(model)
    secret_values = [str(v.get_secret_value() if hasattr(v, "get_secret_value") else v)
                     for k, v in (data or {}).items() if (k in secrets or _is_secret((k,))) and v]
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(root)"
        # An item of a list is named by where the list came from.
        origin = next((sources[p] for p in _prefixes(field) if p in sources), "") if sources else ""
        where = f" (from {origin})" if origin and origin != source and not origin.startswith("profile ") else ""
        if err["type"] == "extra_forbidden":
            # Named without its value: a misspelt key (``apitokn``) most likely holds a secret.
            allowed = _allowed_keys(model, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            if not near and len(loc) == 1 and "plugin_settings" in model.model_fields:  # a plugin's name
                hint = f" (a plugin's settings go under plugin_settings.{field})"
            problems.append(f"{field}{where}: unknown key; allowed keys: {', '.join(allowed)}{hint}")
        elif err["type"] == "missing":
            problems.append(f"{field}{where}: required, not given")
        elif isinstance(nested := (err.get("ctx") or {}).get("error"), ConfigError):
            # A section validated as a config of its own (the service's ``transport``): its problems, each
            # under this field's name. At the root: a model whose __init__ described them already.
            problems += [f"{field}.{problem}" if loc else problem for problem in nested.problems]
        else:
            shown = _shown(err.get("input"), loc, secrets)
            if any(len(s) >= 4 and s in shown for s in secret_values):
                shown = "***"
            problems.append(f"{field}{where} = {shown}: {err['msg'].removeprefix('Value error, ')}")
    where = f" in {source}" if source else ""
    return ConfigError(f"invalid {model.__name__}{where}: " + "; ".join(problems), problems)


def _prefixes(field: str) -> list[str]:
    """``a.b.1`` -> ``["a.b.1", "a.b", "a"]``."""
    parts = field.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def _validate(model: type[TransportConfig], data: dict[str, Any], source: str | None,
              sources: Mapping[str, str] | None = None) -> TransportConfig:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe_validation_error(exc, model, source, sources, data) from None


def validate_section(model: type[BaseModel], data: Mapping[str, Any], source: str) -> BaseModel:
    """Validate a plugin's settings with the plugin's own model, raising :class:`ConfigError`.

    Unknown keys are refused whatever the model says about extras: a misspelt setting must not pass
    silently because a plugin author did not know to forbid them.
    """
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        problems = [f"{k}: unknown key; allowed keys: {', '.join(sorted(model.model_fields))}" for k in unknown]
        raise ConfigError(f"invalid {model.__name__} in {source}: " + "; ".join(problems), problems)
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise describe_validation_error(exc, model, source) from None
