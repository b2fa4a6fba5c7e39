"""Redis clients for three topologies, and Redis's failures turned into the core's errors.

Nothing outside this package sees a redis-py exception: every call runs inside ``answering``,
which raises a ``BackendUnavailable`` of the caller's choice (``CacheUnavailable`` for the shared
tier, ``StoreUnavailable`` for Better Auth's secondary storage) with the cause chained.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.core.errors import BackendUnavailable

# What a call to Redis raises when Redis cannot answer: its own errors, the socket's, the budget's,
# and a host name the IDNA codec refuses (a label over 63 characters), which no resolver is asked.
_FAILURES = (RedisError, OSError, TimeoutError, UnicodeError)


def connect(url: str, *, timeout_s: float, pool_max_size: int) -> Redis | RedisCluster:
    """Make a client for ``url`` (no I/O until the first command).

    ``redis[s]://`` or ``unix://`` (one server), ``redis[s]+cluster://host:port[,...]`` (Redis
    Cluster, any nodes to start from), ``redis[s]+sentinel://host[:port][,...]/<service>[/<db>]``
    (the master Sentinel names for the service; a Sentinel's port is 26379 unless given). Every
    socket operation is bounded by ``timeout_s``; the client never retries on its own (the
    callers' budgets and back-off decide).
    """
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),  # our own budget and back-off decide; no hidden retries
    }
    scheme, _, rest = url.partition("://")
    tls = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        nodes = [ClusterNode(*_host_port(n, 6379)) for n in rest.split("/")[0].split("@")[-1].split(",")]
        creds = _credentials(rest)
        return RedisCluster(startup_nodes=nodes, ssl=tls, max_connections=pool_max_size, **creds, **common)
    if scheme.endswith("+sentinel"):
        hosts, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        creds = _credentials(hosts)
        sentinels = [_host_port(n, 26379) for n in hosts.split("@")[-1].split(",")]
        sentinel = Sentinel(sentinels, sentinel_kwargs=common, **common)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(service, db=int(db or 0), ssl=tls, **creds)
        return master
    pool = BlockingConnectionPool.from_url(url, max_connections=pool_max_size, timeout=timeout_s, **common)
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


async def close(client: Redis | RedisCluster) -> None:
    """Close a client made by ``connect`` and every connection it opened (a Sentinel's too)."""
    await client.aclose()
    # A Sentinel-made client leaves the connections to the Sentinels themselves open.
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


@contextlib.asynccontextmanager
async def answering(timeout_s: float | None, error: type[BackendUnavailable], what: str = "") -> AsyncIterator[None]:
    """Run the body within ``timeout_s`` (``None``: no limit); Redis failing or too slow raises ``error``.

    The cause is chained. The message is ``what`` (when given), the failure's type and its text: never a key or a value.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except _FAILURES as exc:
        raise error(f"{what}{': ' if what else ''}{describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """A failure in one line: its type, and its text when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _host_port(node: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if node.startswith("["):
        host, _, port = node[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, colon, port = node.rpartition(":")
        if not colon:
            host, port = node, ""
    return host, int(port or default_port)


def _credentials(netloc: str) -> dict[str, Any]:
    if "@" not in netloc:
        return {}
    user, _, password = netloc.split("@", maxsplit=1)[0].partition(":")
    return {k: v for k, v in (("username", user), ("password", password)) if v}
