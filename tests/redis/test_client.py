"""Clients for the three topologies from their URLs, and Redis's failures raised as the core's errors."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.core.errors import CacheUnavailable, StoreUnavailable
from gateway.redis.client import answering, close, connect
from tests.support.ports import free_port


def test_a_plain_url_is_one_server_with_a_bounded_pool() -> None:
    """``redis://``: one server, credentials and db from the URL, a blocking pool of the configured size."""
    client = connect("redis://ada:pw@cache.internal:6380/3", timeout_s=0.5, pool_max_size=4)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == 4
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("ada", "pw")
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5


def test_a_cluster_url_lists_the_nodes_to_start_from() -> None:
    """``redis+cluster://``: every node named (IPv6 in brackets, 6379 by default), the credentials for all."""
    client = connect("redis+cluster://ada:pw@10.0.0.1:7000,[::1]:7001,node3", timeout_s=0.5, pool_max_size=4)
    assert isinstance(client, RedisCluster)
    assert [(n.host, n.port) for n in client.startup_nodes] == [("10.0.0.1", 7000), ("::1", 7001), ("node3", 6379)]
    assert (client.connection_kwargs["username"], client.connection_kwargs["password"]) == ("ada", "pw")


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    """``redis+sentinel://``: Sentinels on 26379 unless a port is given; the master of the service, in its db."""
    client = connect("rediss+sentinel://:pw@s1:26380,s2,[::1]/gwmaster/2", timeout_s=0.5, pool_max_size=4)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ]
    assert addresses == [("s1", 26380), ("s2", 26379), ("::1", 26379)]
    assert pool.service_name == "gwmaster"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    assert "SSL" in pool.connection_class.__name__


async def test_redis_away_is_the_callers_error_with_the_cause() -> None:
    """Nobody listening: the error the caller named, its message the failure's type, the cause chained."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5, pool_max_size=1)
    try:
        for error in (CacheUnavailable, StoreUnavailable):
            with pytest.raises(error) as caught:
                async with answering(0.5, error, "the cache"):
                    await client.ping()
            assert isinstance(caught.value.__cause__, RedisConnectionError)
            assert str(caught.value).startswith("the cache: ConnectionError")
    finally:
        await close(client)


async def test_past_the_budget_is_the_callers_error(redis_url: str, redis_prefix: str) -> None:
    """A command Redis holds past the budget raises the caller's error, a ``TimeoutError`` its cause."""
    client = connect(redis_url, timeout_s=5, pool_max_size=1)
    try:
        with pytest.raises(CacheUnavailable) as caught:
            async with answering(0.05, CacheUnavailable):
                await client.blpop([redis_prefix + ":empty"], timeout=2)
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert str(caught.value) == "TimeoutError"
    finally:
        await close(client)


async def test_anything_but_a_redis_failure_goes_through() -> None:
    """A bug in the body is not an outage: ``answering`` lets it through unchanged."""
    with pytest.raises(KeyError):
        async with answering(1.0, CacheUnavailable):
            raise KeyError("bug")
