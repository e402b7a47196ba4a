"""ClientConfig: the service's settings, from a JSON file with environment overrides (PYWATS_CLIENT_<FIELD>)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator

from ..config import (
    FLAG_ALIASES,
    CacheSettings,
    TransportConfig,
    as_switch,
    deep_merge,
    describe_validation_error,
    read_json_file,
)
from ..errors import ConfigError
from ..wats.client import address_problem, ca_context

ENV_PREFIX = "PYWATS_CLIENT_"
log = logging.getLogger("pywats_transport.service")


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    service_address: str = Field(..., description="WATS server URL, e.g. https://wats.example.com")
    api_token: SecretStr = Field(..., description="WATS API token (sent as `Authorization: Basic <token>`).")
    verify_ssl: bool | str = Field(True, description="Check the server's certificate: true (the public CAs), false "
                                   "(no check), or the CA certificate a factory's own servers are signed by (a PEM "
                                   "file or a folder of them; a relative one is this file's neighbour).")
    enable_cache: bool = Field(True, description="Cache GET lookups.")
    cache_ttl_seconds: float = Field(300.0, ge=0, description="Seconds a cached answer is served.")
    cache_max_size: int = Field(1000, ge=1, description="Cached entries kept (LRU).")
    enable_retry: bool = Field(True, description="Retry failed requests with backoff.")
    enable_throttling: bool = Field(True, description="Rate-limit requests to the server.")
    rate_limit: float | None = Field(None, gt=0, description="Requests per second (default of the throttle layer: 10).")
    enable_metrics: bool = Field(True, description="Record metrics and serve them on /metrics.")
    metrics_port: int | None = Field(9090, ge=0, le=65535, description="Extra port serving only /metrics (null: none).")
    health_host: str = Field("127.0.0.1", description="Address the health server binds.")
    health_port: int = Field(8080, ge=0, le=65535, description="Port of the health server (0: any free port).")
    queue_dir: str = Field("pywats_queue", description="Folder watched for report files (WSJF JSON).")
    plugins: list[str] = Field(default_factory=list, description="Plugin layers to enable.")
    poll_interval: float = Field(0.5, gt=0, description="Seconds between scans of the queue folder.")
    retry_backoff_max: float = Field(60.0, gt=0, description="Longest wait before re-sending a report to a server that is down.")
    ping_interval: float = Field(15.0, gt=0, description="Seconds between reachability checks of the server.")
    ready_max_age: float = Field(60.0, gt=0, description="/health/ready needs a server contact at most this old.")
    stuck_after: float = Field(600.0, gt=0, description="A report waiting longer than this marks the queue stuck.")
    done_retention_days: float | None = Field(
        30.0, gt=0, description="Days a confirmed report stays in done/ before it is deleted (WATS has it); "
        "null keeps every one. error/ is never emptied.",
    )
    write_grace_seconds: float = Field(
        5.0, ge=0, description="A report file that does not parse may still be being written in place: it is read "
        "again on later scans, and goes to error/ once it has stayed unchanged this many seconds.",
    )
    health_header_timeout: float = Field(
        10.0, gt=0, description="Seconds a health connection may take to send its request headers before it is closed."
    )
    health_keepalive_timeout: float = Field(5.0, gt=0, description="Seconds an idle health connection stays open.")
    health_max_connections: int = Field(
        100, ge=1, description="Connections the health server holds at once; more are closed at once, so that "
        "a flood of connections cannot take the file descriptors the queue needs.",
    )
    health_parser: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="HTTP parser of the health server: httptools (C, the default when installed) or h11 "
        "(pure Python).",
    )

    transport: dict[str, Any] = Field(
        default_factory=dict,
        description="Further transport settings, as in a TransportConfig file: the fleet tier shared by every "
        "station (`redis`, `cache.storage`, `throttle.backend`), any layer's own settings, plugin settings. Above "
        "the WATS profile; PYWATS_TRANSPORT_* variables win over it, and the keys above (when given) over both.",
    )

    _token_file: Path | None = PrivateAttr(default=None)  # where load() read the token, when from a file

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise describe_validation_error(exc, type(self), None, data=data) from None

    @field_validator("service_address")
    @classmethod
    def _url(cls, value: str) -> str:
        if (problem := address_problem(value)) is not None:
            raise ValueError(problem)
        return value.rstrip("/")

    @field_validator("transport")
    @classmethod
    def _transport(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here, so that `serve` refuses a misspelt key before it starts; kept as given, so that
        # what the file does not set stays the WATS profile's.
        TransportConfig.load(value, environ={}, profile="wats")
        return value

    @field_validator("verify_ssl", mode="before")
    @classmethod
    def _ca(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        # Read as the other switches are (PYWATS_CLIENT_VERIFY_SSL=False, =0, =no), not as a file's name.
        switch = as_switch(value)
        if switch is not None:
            return switch
        if not value.strip():
            raise ValueError("must be true, false or a CA certificate file or folder")
        ca_context(os.path.expanduser(value))  # a path that holds no certificate stops `serve` here
        return os.path.expanduser(value)

    @field_validator("queue_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder (an empty name would make the current directory the queue)")
        return os.path.expanduser(value)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None,
             **overrides: Any) -> ClientConfig:
        data: dict[str, Any] = read_json_file(path) if path is not None else {}
        in_file = set(data)
        env = os.environ if environ is None else environ
        from_env: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name not in overrides:
                from_env[name] = ENV_PREFIX + name.upper()
            if name == "plugins":
                data[name] = [p.strip() for p in raw.split(",") if p.strip()]
            elif field.annotation in (str, SecretStr):
                data[name] = raw  # a token of digits stays a string
            else:
                try:
                    data[name] = json.loads(raw)  # numbers, true/false, null
                except ValueError:
                    data[name] = raw
        token_file = path is not None and "api_token" in data and "api_token" not in overrides
        if path is not None:
            _beside_the_file(data, Path(path).absolute().parent, from_env.keys() | overrides.keys(), env)
        data.update(overrides)
        try:
            loaded = cls.model_validate(data)
        except ValidationError as exc:
            error = describe_validation_error(exc, cls, str(path) if path else "environment", data=data)
            raise _named_from_environment(error, from_env) if path else error from None
        from_file = {name for name in in_file if name not in from_env and name not in overrides}
        if path is not None and "transport" in from_file:
            _refuse_both_in_file(loaded, from_file, path)
        if token_file and ENV_PREFIX + "API_TOKEN" not in env:
            loaded._token_file = Path(path)  # type: ignore[arg-type]
        return loaded

    def warn_if_others_read_the_token(self) -> None:
        """The file the token came from, readable by other users of the machine: said once, by a service
        that has started (a service that cannot start says one thing only, why)."""
        path = self._token_file
        if path is None or os.name != "posix":
            return
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            return
        if mode & 0o077:
            log.warning("%s holds the API token and other users of this machine may read it (mode %o): "
                        "chmod 600 it, or give the token as PYWATS_CLIENT_API_TOKEN", path, mode)

    def transport_flags(self) -> dict[str, Any]:
        """The flags this file (or the environment) gives, for the WATS client: a flag left out leaves the
        ``transport`` section's value. ``enable_metrics`` is always given, as the service serves /metrics by it."""
        given = self.model_fields_set | {"enable_metrics"}
        flags: dict[str, Any] = {flag: getattr(self, field) for field, flag in _FLAG_OF.items() if field in given}
        if "plugins" in given:
            flags["plugins"] = tuple(self.plugins)
        return flags


def _relative(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip()) and not os.path.isabs(os.path.expanduser(value))


def _beside_the_file(data: dict[str, Any], folder: Path, given_elsewhere: AbstractSet[str],
                     env: Mapping[str, str]) -> None:
    """The file's relative paths (and the defaults it leaves) found from its ``folder``, wherever the service
    was started from (systemd, a shortcut, a scheduled task); a path the environment or code gives is the
    current folder's, as any path given there."""
    if "queue_dir" not in given_elsewhere:
        queue = data.get("queue_dir", ClientConfig.model_fields["queue_dir"].default)
        if _relative(queue):
            data["queue_dir"] = str(folder / queue)
    ca = data.get("verify_ssl")
    if "verify_ssl" not in given_elsewhere and _relative(ca) and as_switch(ca) is None:
        data["verify_ssl"] = str(folder / ca)
    if "transport" not in given_elsewhere:
        _database_beside(data, folder, env)


def _database_beside(data: dict[str, Any], folder: Path, env: Mapping[str, str]) -> None:
    """The SQLite cache file of a relative ``transport.cache.sqlite_path`` found from ``folder`` as hishel
    finds it from the current one (a bare name under ``.cache/hishel/``); the default too, when SQLite is
    the storage. Otherwise the section stays as given."""
    transport = data.get("transport", {})
    if not isinstance(transport, dict) or not isinstance(transport.get("cache", {}), dict):
        return  # not the shape asked for: validation names it
    cache = transport.get("cache", {})
    if "sqlite_path" in cache:
        given = cache["sqlite_path"]
    elif "sqlite" in (cache.get("storage"), env.get("PYWATS_TRANSPORT_CACHE__STORAGE")):
        given = CacheSettings.model_fields["sqlite_path"].default
    else:
        return
    if not _relative(given):
        return
    where = Path(given)
    where = folder / (where if where.parent != Path(".") else Path(".cache/hishel") / where)
    data["transport"] = deep_merge(transport, {"cache": {"sqlite_path": str(where)}})


#: the service's own keys that are WATS client flags (named alike, but for the TTL's unit), by flag
_FLAG_OF = {("cache_ttl_seconds" if flag == "cache_ttl" else flag): flag for flag in FLAG_ALIASES}
#: the service's own keys and the ``transport`` settings they stand for
_SECTION_OF = {field: FLAG_ALIASES[flag] for field, flag in _FLAG_OF.items()}


def _refuse_both_in_file(config: ClientConfig, keys: set[str], path: str | os.PathLike[str]) -> None:
    """A key of the file and its ``transport`` section setting one thing two ways: the key would win
    silently (as ``config init`` writes every key, a TTL added to the section would do nothing)."""
    problems = []
    for name, (section, field) in _SECTION_OF.items():
        given = config.transport.get(section)
        if isinstance(given, bool):  # a section given as just its switch
            given = {"enabled": given}
        if name in keys and isinstance(given, dict) and field in given and given[field] != getattr(config, name):
            problems.append(f"{name} = {json.dumps(getattr(config, name))} and transport.{section}.{field} = "
                            f"{json.dumps(given[field])} both set it: keep one (the key would win)")
    if "plugins" in keys and "plugins" in config.transport and config.transport["plugins"] != config.plugins:
        problems.append(f"plugins = {json.dumps(config.plugins)} and transport.plugins = "
                        f"{json.dumps(config.transport['plugins'])} both set it: keep one (the key would win)")
    if problems:
        raise ConfigError(f"invalid ClientConfig in {path}: " + "; ".join(problems), problems)


def _named_from_environment(error: ConfigError, from_env: Mapping[str, str]) -> ConfigError:
    """``error`` with each problem of a field the environment gave marked so (``health_port (from environment
    PYWATS_CLIENT_HEALTH_PORT) = 'x': ...``): the message names the file, where that value is not."""
    problems = []
    for problem in error.problems:
        name = re.match(r"[\w.]+", problem)
        variable = from_env.get(name.group(0).split(".")[0]) if name else None
        problems.append(problem if name is None or variable is None
                        else f"{problem[:name.end()]} (from environment {variable}){problem[name.end():]}")
    message = str(error)
    head = message[:len(message) - len("; ".join(error.problems))]
    return ConfigError(head + "; ".join(problems), problems)


EXAMPLE = {
    "_comment": "pywats-transport client service. Keys starting with '_' are comments. "
                "Every key can be overridden by an environment variable PYWATS_CLIENT_<KEY>.",
    "service_address": "https://wats.example.com",
    "_api_token": "Prefer the environment: PYWATS_CLIENT_API_TOKEN. The token is never logged or echoed.",
    "api_token": "replace-me",
    "_verify_ssl": "true checks the server's certificate against the public CAs; a factory's own CA: the path "
                   "of its certificate (PEM), relative to this file or absolute.",
    "verify_ssl": True,
    "_cache": "Lookups (products, processes, ...) are cached for cache_ttl_seconds; writes invalidate them.",
    "enable_cache": True,
    "cache_ttl_seconds": 300,
    "cache_max_size": 1000,
    "enable_retry": True,
    "enable_throttling": True,
    "_rate_limit": "Requests per second; null keeps the default (10).",
    "rate_limit": None,
    "enable_metrics": True,
    "_metrics_port": "An extra port serving only /metrics; null for none (/metrics is always on the health port).",
    "metrics_port": 9090,
    "_health": "The health server binds 127.0.0.1 unless told otherwise.",
    "health_host": "127.0.0.1",
    "health_port": 8080,
    "_queue_dir": "Drop WSJF report files (*.json) here, best written elsewhere and renamed in (a file that does not parse is read again until it has stayed unchanged for write_grace_seconds). A relative folder is this file's neighbour.",
    "queue_dir": "pywats_queue",
    "_done_retention_days": "Confirmed reports are deleted from queue_dir/done after this many days (WATS has them); null keeps every one.",
    "done_retention_days": 30,
    "plugins": [],
    "_transport": "Further transport settings, as in a TransportConfig file. The fleet tier, shared by every "
                  "station: {\"redis\": {\"url\": \"redis://redis.factory.local:6379/0\"}, \"cache\": "
                  "{\"storage\": \"redis\"}, \"throttle\": {\"backend\": \"redis\"}}; the password from "
                  "the environment, REDIS_PASSWORD.",
    "transport": {},
}


def write_example(path: Path, *, force: bool = False) -> None:
    """The commented example, readable by its owner only: the token goes into it."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh station's folder, not made yet
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
            out.write(json.dumps(EXAMPLE, indent=2) + "\n")
        if os.name == "posix":
            path.chmod(0o600)  # a file --force overwrote keeps its mode otherwise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
