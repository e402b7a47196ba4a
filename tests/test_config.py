from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from pywats_transport import ConfigError, TransportConfig, build_transport


def test_generic_defaults_take_nothing_an_httpx_app_did_not_ask_for() -> None:
    cfg = TransportConfig()
    assert cfg.cache.enabled and cfg.cache.mode == "rfc" and cfg.cache.max_size == 1000
    assert cfg.retry.max_attempts == 3 and not cfg.throttle.enabled and not cfg.metrics.enabled
    assert cfg.enabled_names() == ["cache", "retry"]
    assert TransportConfig.load().model_dump() == cfg.model_dump()


def test_from_flags_sections_aliases_and_prefixed_names() -> None:
    cfg = TransportConfig.from_flags(enable_cache=False, retry={"max_attempts": 4}, throttle_rate=2.5, rate_limit=None)
    assert not cfg.cache.enabled and cfg.retry.max_attempts == 4 and cfg.throttle.rate == 2.5


def test_from_json_file_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"_comment": "x", "cache": {"ttl": 12, "_why": "short"}, "plugins": []}))
    assert TransportConfig.from_file(path).cache.ttl == 12


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Windows PowerShell's ``Set-Content -Encoding UTF8`` and older Notepad save UTF-8 with a byte order
    mark: such a file was "not valid JSON: Unexpected UTF-8 BOM"."""
    from pywats_transport.service import ClientConfig

    path = tmp_path / "t.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"cache": {"ttl": 12}}).encode())
    assert TransportConfig.from_file(path).cache.ttl == 12
    path.write_bytes(json.dumps({"cache": {"ttl": 13}}).encode("utf-16"))  # PowerShell 5's `>`: UTF-16, marked
    assert TransportConfig.from_file(path).cache.ttl == 13
    client = tmp_path / "client.json"
    client.write_bytes(b"\xef\xbb\xbf" + json.dumps({"service_address": "http://127.0.0.1:9", "api_token": "tok-1234",
                                                     "rate_limit": 3}).encode())
    assert ClientConfig.load(client).rate_limit == 3


def test_env_overrides_file_and_flags_override_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cache": {"ttl": 12, "max_size": 5}}))
    monkeypatch.setenv("PYWATS_TRANSPORT_CACHE__TTL", "60")
    monkeypatch.setenv("PYWATS_TRANSPORT_RETRY__ENABLED", "false")
    monkeypatch.setenv("PYWATS_TRANSPORT_PLUGINS", "stamp")
    cfg = TransportConfig.load(path, cache_max_size=7)
    assert (cfg.cache.ttl, cfg.cache.max_size, cfg.retry.enabled, cfg.plugins) == (60, 7, False, ["stamp"])
    # loaded again (as every builder loads what it is given), the flags stay above the environment
    monkeypatch.setenv("PYWATS_TRANSPORT_CACHE__MAX_SIZE", "9")
    again = TransportConfig.load(TransportConfig.load(path, cache_max_size=7, retry={"enabled": True}))
    assert (again.cache.ttl, again.cache.max_size, again.retry.enabled) == (60, 7, True)
    assert again.sources()["cache.max_size"] == "flags" and again.sources()["cache.ttl"] == "environment PYWATS_TRANSPORT_CACHE__TTL"
    monkeypatch.setenv("PYWATS_TRANSPORT_THROTTLE__RATE", "7")
    with build_transport(TransportConfig.load(rate_limit=3, enable_throttling=True), inner=httpx.MockTransport(lambda r: httpx.Response(200))) as stack:
        assert stack.get_layer("throttle").policy.settings.rate == 3


@pytest.mark.parametrize(("name", "raw", "field", "expected"), [
    ("PYWATS_TRANSPORT_RETRY__STATUSES", "429,503", ("retry", "statuses"), [429, 503]),
    ("PYWATS_TRANSPORT_RETRY__STATUSES", "429", ("retry", "statuses"), [429]),
    ("PYWATS_TRANSPORT_RETRY__STATUSES", "[429, 503]", ("retry", "statuses"), [429, 503]),
    ("PYWATS_TRANSPORT_RETRY__METHODS", "get, put", ("retry", "methods"), ["GET", "PUT"]),
    ("PYWATS_TRANSPORT_CACHE__IDENTITY_HEADERS", "x-api-key", ("cache", "identity_headers"), ["x-api-key"]),
    ("PYWATS_TRANSPORT_ORDER", "retry,cache", ("order",), ["retry", "cache"]),
    ("PYWATS_TRANSPORT_ORDER", "null", ("order",), None),
])
def test_a_list_from_the_environment_is_comma_separated_as_plugins_are(
        name: str, raw: str, field: tuple[str, ...], expected: object) -> None:
    cfg = TransportConfig.load(environ={name: raw})
    value: object = cfg
    for part in field:
        value = getattr(value, part)
    assert value == expected  # before: "Input should be a valid list"


def test_a_bad_item_of_a_list_names_the_variable_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"retry\.statuses\.1 \(from environment PYWATS_TRANSPORT_RETRY__STATUSES\) = "
                                          r"'x': Input should be a valid integer"):
        TransportConfig.load(environ={"PYWATS_TRANSPORT_RETRY__STATUSES": "429,x"})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cache": {"ttl": -1}}, r"cache\.ttl = -1: Input should be greater than or equal to 0"),
        ({"cache": {"mode": "sometimes"}}, r"cache\.mode = 'sometimes': Input should be 'ttl' or 'rfc'"),
        ({"cache": {"tll": 5}}, r"cache\.tll: unknown key.*allowed keys: coalesce, coalesce_timeout, cookie_identity, enabled, identity_headers"),
        ({"retry": {"max_attempts": "many"}}, r"retry\.max_attempts = 'many': Input should be a valid integer"),
        ({"bogus": 1}, r"bogus: unknown key.*allowed keys: blocked_plugins, cache, metrics, order, plugin_settings, plugins, positions, profile, redis, retry, throttle"),
        ({"retry": {"statuses": [200, 999]}}, r"statuses must be HTTP status codes 100-599, got \[999\]"),
    ],
)
def test_invalid_input_names_field_value_and_allowed(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        TransportConfig.from_dict(data)


def test_several_problems_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        TransportConfig.from_dict({"cache": {"ttl": -1, "max_size": 0}})
    assert len(info.value.problems) == 2


def test_unknown_flag_lists_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown flag 'cach_ttl' \(did you mean cache_ttl\?\); allowed: .*enable_cache"):
        build_transport(cach_ttl=5)


def test_bad_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        TransportConfig.from_file(path)
    path.write_text(json.dumps({"throttle": {"rate": 0}}))
    with pytest.raises(ConfigError, match=r"in .*bad.json: throttle\.rate = 0"):
        TransportConfig.from_file(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        TransportConfig.from_file(tmp_path / "missing.json")


def test_secret_values_are_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        TransportConfig.from_dict({"plugin_settings": {"x": 1}, "api_token": "s3cr3t"})
    assert "s3cr3t" not in str(info.value)


def test_redis_urls_name_the_allowed_forms_and_never_show_a_password() -> None:
    from pywats_transport.caching.redis_connect import nodes_address

    for section in ("cache", "throttle"):
        with pytest.raises(ConfigError) as bad:
            TransportConfig.load({section: {"redis_url": "http://user:pw-secret-1@10.0.0.1:6379"}})
        message = str(bad.value)
        assert f"{section}.redis_url" in message and "pw-secret-1" not in message
        assert all(form in message for form in ("redis://", "rediss://", "unix://", "redis+cluster://"))
    with pytest.raises(ConfigError, match="host:port") as bad:
        TransportConfig.load({"cache": {"redis_url": "redis+cluster://:pw-secret-2@nodes-without-ports"}})
    assert "pw-secret-2" not in str(bad.value)
    address = nodes_address("rediss+cluster://station:p%40ss@10.0.0.1:7000,10.0.0.2:7001/0")
    assert address.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert address.options() == {"ssl": True, "username": "station", "password": "p@ss"}
    # TLS files as URL options, read as redis-py reads a single server's URL
    tls = nodes_address("rediss+cluster://h1:7000?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false").options()
    assert tls == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": False}
    assert TransportConfig.load({"cache": {"redis_url": "redis+cluster://h1:7000,h2:7000"}}).cache.redis_url
    with pytest.raises(ConfigError, match="names the service"):
        TransportConfig.load({"redis": {"url": "redis+sentinel://s1:26379,s2:26379"}})
    sentinel = nodes_address("rediss+sentinel://:pw@s1:26379,s2:26379/pwt/2")
    assert sentinel.nodes == (("s1", 26379), ("s2", 26379)) and sentinel.path == ("pwt", "2") and sentinel.tls


@pytest.mark.parametrize(("url", "says"), [
    ("redis://:pw-secret-3@h:6379/O", "the database (the URL's last part: .../0, .../15) must be a whole number, got 'O'"),
    ("redis+sentinel://s1:26379/pwt/two", "must be a whole number, got 'two'"),
    ("redis://h:6379/0?sokcet_timeout=1", "the URL's option 'sokcet_timeout' is not one redis-py's connections take"),
    ("redis+cluster://h1:7000?bogus=1", "the URL's option 'bogus' is not one"),
    ("rediss://h:6379/0?socket_timeout=soon", "the URL's option socket_timeout cannot be 'soon'"),
])
def test_a_redis_url_redis_py_would_misread_is_refused_where_it_is_configured(url: str, says: str) -> None:
    """redis-py reads a database that is not a number as database 0, silently, and passes an unknown URL
    option to each connection, whose TypeError the station took for a Redis outage, logged and retried for
    good; a bad option's value failed each connection the same way."""
    with pytest.raises(ConfigError) as bad:
        TransportConfig.load({"redis": {"url": url}})
    assert says in str(bad.value) and "redis.url" in str(bad.value) and "pw-secret-3" not in str(bad.value)


def test_the_redis_url_options_redis_py_takes_are_accepted() -> None:
    for url in ("rediss://h:6379/3?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&client_name=st7",
                "redis://h:6379?health_check_interval=30&socket_keepalive=true&max_connections=8",
                "redis+sentinel://s1:26379/pwt/2?socket_connect_timeout=0.5", "unix:///run/redis.sock?db=1"):
        assert TransportConfig.load({"redis": {"url": url}}).redis.url == url


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_near_cache_without_redis_is_refused_naming_the_storage(storage: str) -> None:
    """``near_cache: true`` with another storage than Redis did nothing, silently (most likely
    ``storage: redis`` was forgotten)."""
    with pytest.raises(ConfigError, match=f"cache.near_cache .*it needs storage 'redis', and storage is '{storage}'"):
        TransportConfig.load({"cache": {"near_cache": True, "storage": storage}})
    assert TransportConfig.load({"cache": {"near_cache": True, "storage": "redis"}}).cache.near_cache


@pytest.mark.parametrize("config", [5, 2.5, ["cache"]])
def test_a_config_of_no_accepted_form_says_which_it_takes(config: object) -> None:
    """``build_transport(5)`` said "'int' object is not iterable"."""
    with pytest.raises(TypeError, match=r"config must be a TransportConfig, a dict or the path of a JSON file, got "):
        build_transport(config)  # type: ignore[arg-type]


def test_a_layer_is_switched_by_true_or_false_in_a_file_a_dict_or_the_environment(tmp_path: Path) -> None:
    """``retry=False`` worked as a flag, but ``"retry": false`` in a JSON file or a dict, and
    ``PYWATS_TRANSPORT_RETRY=false``, were "Input should be a valid dictionary"."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"retry": False, "cache": True}))
    cfg = TransportConfig.load(path, environ={}, profile="wats")
    assert cfg.enabled_names() == ["cache", "throttle"]
    # `true` switches the layer on and keeps the rest of its section as it was (here the profile's).
    assert (cfg.cache.mode, cfg.cache.ttl) == ("ttl", 300.0)
    assert cfg.source_of("retry.enabled") == f"file {path}" and cfg.source_of("cache.mode") == "profile wats"
    cfg = TransportConfig.load({"throttle": False}, environ={"PYWATS_TRANSPORT_CACHE": "false"}, profile="wats")
    assert cfg.enabled_names() == ["retry"]
    assert cfg.source_of("cache.enabled") == "environment PYWATS_TRANSPORT_CACHE"
    assert TransportConfig.model_validate({"metrics": True}).metrics.enabled
    with build_transport({"retry": False, "cache": False}) as stack:
        assert stack.names == []
    # As the environment gives every other switch (PYWATS_TRANSPORT_CACHE__ENABLED=False works).
    for word, on in (("False", False), ("0", False), ("no", False), ("1", True), ("True", True), ("on", True)):
        cfg = TransportConfig.load(environ={"PYWATS_TRANSPORT_CACHE": word}, profile="wats")
        assert (cfg.cache.enabled, cfg.cache.mode) == (on, "ttl")
    with pytest.raises(ConfigError, match=r"retry \(from environment PYWATS_TRANSPORT_RETRY\) = 3: must be true, "
                                          r"false or an object of its settings"):
        TransportConfig.load(environ={"PYWATS_TRANSPORT_RETRY": "3"})


def test_an_unknown_key_names_the_nearest_one_or_where_a_plugins_settings_go() -> None:
    """``{"circuitbreaker": {...}}`` (the plugin's name, as a section) was only "unknown key", with nothing
    of plugin_settings; a misspelt key likewise left the reader to search the list."""
    with pytest.raises(ConfigError) as info:
        TransportConfig.load({"circuitbreaker": {"failure_threshold": 2}, "chache": {}, "retry": {"max_attempt": 2}},
                             environ={})
    problems = sorted(info.value.problems)
    assert problems[0].startswith("chache: unknown key;") and problems[0].endswith("(did you mean cache?)")
    assert problems[1].endswith("(a plugin's settings go under plugin_settings.circuitbreaker)")
    assert problems[2].startswith("retry.max_attempt: unknown key;") and problems[2].endswith("(did you mean max_attempts?)")
