"""Transport configuration: one pydantic section per built-in layer plus plugin settings.

Sources, later ones winning: defaults, a JSON file or dict, environment variables
(``PYWATS_TRANSPORT_<SECTION>__<FIELD>``), keyword flags.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "PYWATS_TRANSPORT_"
_SECRET_HINTS = ("token", "password", "secret", "authorization", "api_key")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CacheSettings(Section):
    enabled: bool = Field(True, description="Cache GET/HEAD responses.")
    ttl: float = Field(300.0, ge=0, description="Seconds an entry is served (mode `ttl`), or the storage TTL (mode `rfc`).")
    max_size: int = Field(1000, ge=1, description="Entries kept by the memory storage before LRU eviction.")
    mode: Literal["ttl", "rfc"] = Field("ttl", description="`ttl`: cache 2xx GET/HEAD ignoring headers; `rfc`: RFC 9111.")
    storage: Literal["memory", "sqlite", "redis"] = Field("memory", description="Where entries live.")
    sqlite_path: str = Field("pywats_transport_cache.db", description="Database file for `storage: sqlite` (a bare name goes under .cache/hishel/).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Server for `storage: redis`.")
    identity_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "X-Api-Key", "Cookie"],
        description="Request headers whose value (hashed) is part of the cache key.",
    )
    invalidate_on_write: bool = Field(True, description="A successful POST/PUT/PATCH/DELETE drops entries under its path.")
    coalesce: bool = Field(True, description="Concurrent identical lookups wait for the first one instead of all missing.")
    coalesce_timeout: float = Field(10.0, gt=0, description="Longest a coalesced request waits for the first one (seconds).")


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
    enabled: bool = Field(True, description="Rate-limit outgoing requests.")
    rate: float = Field(10.0, gt=0, description="Requests per second (token refill rate).")
    burst: int = Field(20, ge=1, description="Bucket size: requests allowed at once after idling.")
    max_concurrency: int | None = Field(None, ge=1, description="Cap on requests in flight.")
    per_host: bool = Field(True, description="One bucket per host instead of one for all.")
    max_wait: float | None = Field(None, ge=0, description="Fail fast instead of waiting longer than this (seconds).")
    adaptive: bool = Field(True, description="Slow down a host after 429/503 with Retry-After, recover gradually.")
    min_rate: float = Field(0.5, gt=0, description="Lowest rate the adaptive mode slows a host to.")


class MetricsSettings(Section):
    enabled: bool = Field(False, description="Record OpenTelemetry HTTP client metrics (opt-in).")
    record_body_sizes: bool = Field(
        False,
        description="Also record http.client.request/response.body.size where the length is known. Opt-in: these "
        "histograms are experimental in the OpenTelemetry conventions and cost one more measurement per request.",
    )


BUILTIN_SECTIONS: dict[str, type[Section]] = {
    "metrics": MetricsSettings,
    "cache": CacheSettings,
    "retry": RetrySettings,
    "throttle": ThrottleSettings,
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
    plugins: list[str] = Field(default_factory=list, description="Names of plugin layers to enable.")
    plugin_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Settings per plugin name, validated by the plugin's own model."
    )

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
        **flags: Any,
    ) -> TransportConfig:
        """Resolve any accepted config form, then environment variables, then flags."""
        if isinstance(config, TransportConfig):
            data: dict[str, Any] = config.model_dump(exclude_unset=True)
            source = "config"
        elif isinstance(config, (str, os.PathLike)):
            data, source = read_json_file(config), str(config)
        else:
            data, source = dict(config or {}), "config"
        data = deep_merge(data, env_overrides(ENV_PREFIX, os.environ if environ is None else environ))
        data = deep_merge(data, flags_to_dict(flags))
        return _validate(cls, data, source)

    def enabled_names(self) -> list[str]:
        return [name for name in BUILTIN_SECTIONS if getattr(self, name).enabled] + list(self.plugins)


def read_json_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
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
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix):
            continue
        path = [part.lower() for part in name[len(prefix):].split("__") if part]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = [v.strip() for v in raw.split(",") if v.strip()] if path == ["plugins"] else raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
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
        elif key in ("plugins", "plugin_settings"):
            out[key] = list(value) if key == "plugins" else dict(value)
        elif key in FLAG_ALIASES:
            section, field = FLAG_ALIASES[key]
            out = deep_merge(out, {section: {field: value}})
        else:
            owner = next((s for s in BUILTIN_SECTIONS if key.startswith(s + "_")), None)
            if owner is None:
                allowed = sorted([*BUILTIN_SECTIONS, "plugins", "plugin_settings", *FLAG_ALIASES])
                raise ConfigError(
                    f"unknown flag {key!r}; allowed: {', '.join(allowed)} or <section>_<field> "
                    f"(for example cache_ttl, retry_max_attempts)"
                )
            out = deep_merge(out, {owner: {key[len(owner) + 1:]: value}})
    return out


def _is_secret(loc: tuple[Any, ...]) -> bool:
    return any(isinstance(part, str) and any(h in part.lower() for h in _SECRET_HINTS) for part in loc)


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str | None) -> ConfigError:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(root)"
        value = "***" if _is_secret(loc) else repr(err.get("input"))
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            problems.append(f"{field}: unknown key (value {value}); allowed keys: {', '.join(allowed)}")
        else:
            problems.append(f"{field} = {value}: {err['msg']}")
    where = f" in {source}" if source else ""
    return ConfigError(f"invalid {model.__name__}{where}: " + "; ".join(problems), problems)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def _validate(model: type[TransportConfig], data: dict[str, Any], source: str | None) -> TransportConfig:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe_validation_error(exc, model, source) from None


def validate_section(model: type[BaseModel], data: Mapping[str, Any], source: str) -> BaseModel:
    """Validate a plugin's settings with the plugin's own model, raising :class:`ConfigError`."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise describe_validation_error(exc, model, source) from None
