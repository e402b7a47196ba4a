"""Redis clients from one URL, for every Redis connection of ours (cache storage, near-cache
invalidation, fleet rate).

- One server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, as redis-py reads them.
- Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``
  for TLS), the startup nodes; the client learns the others from the cluster. Every key of ours
  carries one hash tag, so each script and transaction runs on the one node that owns that slot.
- Redis Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://``), the sentinels and the name they watch; every connection goes to the
  current primary, and after a failover to the new one.

Timeouts are short, and the password may come from the environment (``REDIS_PASSWORD``) when the
URL carries none; it is never logged.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_cluster(url: str) -> bool:
    return scheme_of(url) in CLUSTER_SCHEMES


def is_sentinel(url: str) -> bool:
    return scheme_of(url) in SENTINEL_SCHEMES


def one_server(url: str) -> bool:
    """Whether ``url`` names one server (a connection of its own for lookups is worth keeping)."""
    return scheme_of(url) in SINGLE_SCHEMES


def check_url(url: str) -> str:
    """``url`` if it names a server or a cluster; else a ValueError naming the allowed forms (never the
    URL itself, which may hold a password)."""
    if scheme_of(url) not in SCHEMES:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme_of(url) in ("redis", "rediss"):
        _readable(url)
        _check_db(unquote(urlsplit(url).path).strip("/"))
    if is_cluster(url):
        nodes_address(url)
    if is_sentinel(url):
        path = nodes_address(url).path
        if not path:
            raise ValueError("a sentinel URL names the service the sentinels watch: "
                             "redis+sentinel://host:port[,host:port...]/service[/db]")
        _check_db("/".join(path[1:]))
    _check_options(url.partition("?")[2])
    return url


def _check_db(db: str) -> None:
    # redis-py reads a database that is not a number as none given, and would use database 0 silently.
    if db and not db.isdigit():
        raise ValueError(f"the database (the URL's last part: .../0, .../15) must be a whole number, got {db!r}")


#: options redis-py's connections take from a URL's query, named when one is not known
URL_OPTION_EXAMPLES = "ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, client_name, health_check_interval"


def _check_options(query: str) -> None:
    """Each option of the URL's query one redis-py's connections take, with a value it reads: an unknown
    one failed every connection (a TypeError, taken for a Redis outage), a bad value each connection."""
    if not query:
        return
    try:
        from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    except ImportError:  # the redis extra is not installed: nothing of ours connects to Redis
        return
    known = _connection_options()
    parsers: dict[str, Callable[[str], Any]] = dict(URL_QUERY_ARGUMENT_PARSERS)  # type: ignore[arg-type]
    for name, values in parse_qs(query).items():
        if name not in known:
            raise ValueError(f"the URL's option {name!r} is not one redis-py's connections take "
                             f"(they take, for example, {URL_OPTION_EXAMPLES})")
        parser = parsers.get(name)
        if parser is not None:
            try:
                parser(unquote(values[0]))
            except ValueError:  # a number or a yes/no: not a secret
                raise ValueError(f"the URL's option {name} cannot be {values[0]!r}") from None


def _connection_options() -> set[str]:
    import inspect

    from redis.connection import (
        AbstractConnection,
        Connection,
        ConnectionPool,
        SSLConnection,
        UnixDomainSocketConnection,
    )

    names = {"max_connections"}
    for cls in (AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection, ConnectionPool):
        names.update(inspect.signature(cls.__init__).parameters)
    return names - {"self", "args", "kwargs", "host", "port", "path", "connection_class"}


def _readable(url: str) -> None:
    """A server URL redis-py can read, or a ValueError that says why without showing it: a password's
    ``/`` (or ``?``, ``#``) left unencoded ends the host where it stands."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - read for the ValueError it raises
    except ValueError:
        parts = parts._replace(netloc="?")
    if parts.netloc == "?" or "@" in parts.path or "@" in parts.query.partition("=")[0]:
        raise ValueError("cannot be read as redis[s]://[[user]:password@]host[:port][/db]: a password holding "
                         "'/', '?' or '#' must be percent-encoded (%2F, %3F, %23)")


@dataclass(frozen=True)
class NodesAddress:
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    #: the URL's options (``?ssl_ca_certs=/path/ca.pem``), parsed as redis-py parses a server URL's
    query: tuple[tuple[str, Any], ...] = ()
    #: what follows the nodes: a sentinel URL's service name and database
    path: tuple[str, ...] = ()

    def options(self) -> dict[str, Any]:
        """Client keywords from the URL (they win over the environment's password)."""
        out: dict[str, Any] = {"ssl": True} if self.tls else {}
        out.update(self.query)
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out


def nodes_address(url: str) -> NodesAddress:
    """The nodes, credentials and options of a cluster or sentinel URL."""
    rest, _, query = url.split("://", 1)[1].partition("?")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("a cluster or sentinel URL lists its nodes as host:port[,host:port...]")
        nodes.append((host.strip("[]"), int(port)))
    return NodesAddress(tuple(nodes), unquote(username) or None, unquote(password) or None,
                          scheme_of(url).startswith("rediss+"), _query_options(query),
                          tuple(unquote(part) for part in path.split("/") if part))


def _query_options(query: str) -> tuple[tuple[str, Any], ...]:
    if not query:
        return ()
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    out = []
    parsers: dict[str, Callable[[str], Any]] = dict(URL_QUERY_ARGUMENT_PARSERS)  # type: ignore[arg-type]
    for name, values in parse_qs(query).items():
        value = unquote(values[0])
        parser = parsers.get(name)
        out.append((name, parser(value) if parser else value))
    return tuple(out)


def redis_options(timeout: float) -> dict[str, Any]:
    """Client options for every Redis connection of ours: short timeouts, and the password from the
    environment (``REDIS_PASSWORD``) when the URL carries none."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if os.environ.get("REDIS_PASSWORD"):
        options["password"] = os.environ["REDIS_PASSWORD"]
    return options


class Deferred:
    """A client made on first use. redis-py's sync cluster client (and a sync single-connection client)
    connects when it is made, which must not fail where a layer is built: Redis may be down at start,
    and requests must work then. The first call makes it, inside the caller's guard; a failed attempt
    is tried again on the next call."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._lock = threading.Lock()

    def made(self) -> Any:
        if self._made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)

    def close(self) -> None:
        if self._made is not None:
            self._made.close()


#: the oldest redis-py the fleet tier runs on. Before 7.2 an asyncio pool connected its new connections
#: while it held its lock: on a hung Redis, the requests of a burst that each needed one waited the
#: timeouts of those before them (two, three timeouts and more), where each should wait one.
REDIS_PY_MIN = (7, 2)


def require_redis(use: str) -> None:
    """An ImportError naming ``use`` and what to install, unless redis-py is installed and recent enough."""
    try:
        import redis
    except ImportError:
        raise ImportError(f"{use} needs the redis package: pip install 'pywats-transport[redis]'") from None
    installed = tuple(int(part) for part in re.findall(r"\d+", redis.__version__)[:2])
    if installed < REDIS_PY_MIN:
        wanted = ".".join(map(str, REDIS_PY_MIN))
        raise ImportError(f"{use} needs redis-py {wanted} or later (installed: {redis.__version__}): "
                          f"pip install -U 'redis>={wanted}'")


def _reconnect_once(retry_cls: Any, *, cluster: bool = False) -> Any:
    """One immediate retry on a connection the server closed (an idle timeout, a restart): the call
    goes on over a new connection instead of counting as an outage. Timeouts are not retried, so a
    request waits at most one timeout on a dead or hung Redis. A cluster client retries timeouts too,
    whatever the retry's errors, so it gets none (a stale connection is found when taken from its
    node's pool, and a moved slot is followed without a retry)."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError

    return retry_cls(NoBackoff(), 0 if cluster else 1, supported_errors=(ConnectionError,))


def sync_client(url: str, timeout: float, *, single_connection: bool = False, **extra: Any) -> Any:
    """A ``redis.Redis`` (or, for a cluster URL, a :class:`Deferred` ``RedisCluster``); ``extra``
    overrides the default options (``socket_timeout=None`` for a subscriber)."""
    import redis
    from redis.retry import Retry

    options = {**redis_options(timeout), "retry": _reconnect_once(Retry), **extra}
    if is_cluster(url):
        require_redis("a Redis Cluster URL")
        from redis.cluster import ClusterNode, RedisCluster

        address = nodes_address(url)
        options = {**options, "retry": _reconnect_once(Retry, cluster=True), **extra, **address.options()}
        return Deferred(lambda: RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in address.nodes], **options))
    if is_sentinel(url):
        from redis.sentinel import Sentinel

        return _primary(Sentinel, url, options)
    if single_connection:
        return Deferred(lambda: redis.Redis.from_url(url, single_connection_client=True, **options))
    return redis.Redis.from_url(url, **options)


def async_client(url: str, timeout: float, *, single_connection: bool = False, **extra: Any) -> Any:
    """A ``redis.asyncio.Redis`` (or ``RedisCluster``); neither connects before its first command."""
    import redis.asyncio
    from redis.asyncio.retry import Retry

    options = {**redis_options(timeout), "retry": _reconnect_once(Retry), **extra}
    if is_cluster(url):
        require_redis("a Redis Cluster URL")
        from redis.asyncio.cluster import ClusterNode

        address = nodes_address(url)
        options = {**options, "retry": _reconnect_once(Retry, cluster=True), **extra, **address.options()}
        return _async_cluster()(startup_nodes=[ClusterNode(h, p) for h, p in address.nodes], **options)
    if is_sentinel(url):
        from redis.asyncio.sentinel import Sentinel

        return _primary(Sentinel, url, options)
    return redis.asyncio.Redis.from_url(url, single_connection_client=single_connection, **options)


def lookup_connection(url: str, timeout: float, **extra: Any) -> Any:
    """A ``redis.Connection`` to a one-server URL, as its clients' pools make them, for
    :class:`~.redis_lookup.Lookups`; it connects on its first command."""
    import redis

    return redis.ConnectionPool.from_url(url, **{**redis_options(timeout), **extra}).make_connection()


def async_lookup_connection(url: str, timeout: float, **extra: Any) -> Any:
    """A ``redis.asyncio.Connection`` for :class:`~.redis_lookup.AsyncLookups`: no socket timeout (each
    lookup runs under its own deadline), ``timeout`` to connect."""
    import redis.asyncio

    options = {**redis_options(timeout), "socket_timeout": None, **extra}
    return redis.asyncio.ConnectionPool.from_url(url, **options).make_connection()


async def aclose_quietly(client: Any) -> None:
    """Close an asyncio client without raising: redis-py may time out closing a connection (an event loop
    busy with hundreds), and a layer's close must neither raise that nor leave its other clients open."""
    try:
        await client.aclose()
    except Exception as exc:
        logging.getLogger("pywats_transport.cache").debug("a Redis client did not close cleanly: %s",
                                                           type(exc).__name__)


@lru_cache(maxsize=1)
def _async_cluster() -> Any:
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import ConnectionError

    class InitializedFirst(RedisCluster):  # type: ignore[misc]
        """redis-py's asyncio cluster client, which learns the cluster before it routes a command. Not yet
        initialized, it routes the commands already in flight as keyless, to any primary: the slot's owner
        answers MOVED, the client learns the cluster again, and closes the other commands' connections
        under them. A station's first requests at once counted as an outage, and skipped Redis.

        It also takes ``redis_connect_func``, as the sync cluster client does, for every node's connections
        (redis-py's asyncio one sets it only for reading from replicas)."""

        def __init__(self, *args: Any, redis_connect_func: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if redis_connect_func is not None:
                # The nodes it learns take these; the startup nodes were made with a copy.
                self.connection_kwargs["redis_connect_func"] = redis_connect_func
                for node in self.nodes_manager.startup_nodes.values():
                    node.connection_kwargs["redis_connect_func"] = redis_connect_func

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            await self.initialize()  # at once, once it has been
            try:
                return await super().execute_command(*args, **kwargs)
            except ConnectionError:
                # A connection the node closed (a restart, an idle timeout) is found only as it is used, by
                # this client: the call goes on once more, over a new one. Never after a timeout (a
                # TimeoutError is not a ConnectionError), so a hung node still costs one timeout.
                return await super().execute_command(*args, **kwargs)

    return InitializedFirst


def _primary(sentinel_cls: Any, url: str, options: dict[str, Any]) -> Any:
    """A client of the primary the sentinels name. It asks them again for every new connection, so
    after a failover its next connection goes to the new primary; neither it nor the sentinels are
    contacted before the first command."""
    address = nodes_address(url)
    service, *rest = address.path
    node_options = {**options, **address.options()}
    if rest and rest[0].isdigit():
        node_options["db"] = int(rest[0])
    # The sentinels answer within the same short timeouts as the nodes.
    asking = {k: node_options[k] for k in ("socket_timeout", "socket_connect_timeout") if node_options.get(k)}
    return sentinel_cls(list(address.nodes), sentinel_kwargs=asking).master_for(service, **node_options)

