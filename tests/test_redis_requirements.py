"""The fleet tier refuses a redis-py older than it runs on, where the stack is built."""

from __future__ import annotations

import pytest

from pywats_transport import build_async_transport, build_transport
from pywats_transport.caching.redis_connect import REDIS_PY_MIN

WANTED = ".".join(map(str, REDIS_PY_MIN))


@pytest.mark.parametrize("build", [build_transport, build_async_transport])
@pytest.mark.parametrize("layer", ["cache", "throttle"])
def test_a_redis_py_older_than_the_fleet_runs_on_is_refused_naming_what_to_install(
        build: object, layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py before 7.2 connected an asyncio pool's new connections under the pool's lock: on a hung
    Redis a burst's lookups waited one timeout after another (0.2, 0.4, 0.6 s at a 0.2 s timeout)."""
    import redis

    monkeypatch.setattr(redis, "__version__", "6.2.0")
    settings = {"cache": {"storage": "redis", "redis_url": "redis://127.0.0.1:1/0"}} if layer == "cache" else {
        "throttle": {"enabled": True, "backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}}
    with pytest.raises(ImportError, match=rf"needs redis-py {WANTED} or later \(installed: 6\.2\.0\).*redis>={WANTED}"):
        build(**settings)  # type: ignore[operator]

