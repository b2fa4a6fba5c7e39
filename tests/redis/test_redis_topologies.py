"""REDIS_URL for a real 3-node Redis Cluster and for Sentinel, both started by the tests."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign, token_hash
from gateway.lookup.protocols import SharedRead
from gateway.postgres import seed
from gateway.redis.reads import ClusterReads
from gateway.resources import open_resources
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.redis import PATIENT_REDIS, RedisServer, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    import asyncpg

    from gateway.core.errors import CacheUnavailable

SLOTS = 16384


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three masters with --cluster-enabled, joined by redis-cli --cluster create (or the same by hand)."""
    nodes = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        # The bus port defaults to port + 10000, which a free port may push past 65535.
        bus = ("--cluster-port", str(free_port()))
        nodes.append(RedisServer(tmp_path / str(i), "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", *bus))
    try:
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        if shutil.which("redis-cli"):
            cmd = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)  # noqa: S603
        else:  # what --cluster create does: share the slots out, then introduce the nodes
            clients = [redis.Redis(port=n.port) for n in nodes]
            for i, c in enumerate(clients):
                c.execute_command("CLUSTER ADDSLOTSRANGE", i * SLOTS // 3, (i + 1) * SLOTS // 3 - 1)
            for n in nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", n.port)
        deadline = time.monotonic() + 20
        while any(_cluster_state(n.port) != "ok" for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not converge"
            time.sleep(0.1)
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def _cluster_state(port: int) -> str:
    with redis.Redis(port=port) as client:
        return str(client.execute_command("CLUSTER INFO")["cluster_state"])


@pytest.fixture
def sentinel(tmp_path: Path, own_redis: RedisServer) -> Iterator[int]:
    """A Sentinel watching ``own_redis`` as master ``gwmaster``; yields its port."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor gwmaster 127.0.0.1 {own_redis.port} 1\n")
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).execute_command("SENTINEL get-master-addr-by-name gwmaster"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


async def seeded(db: asyncpg.Connection, n: int) -> list[str]:
    uid = await seed.create_user(db, email=f"{seed.generate_id(6)}@example.com")
    return [await seed.create_session(db, uid) for _ in range(n)]


async def decide_all(settings: Any, tokens: list[str]) -> tuple[set[Reason], int]:
    async with open_resources(settings) as res:
        assert res.store is not None
        verdicts = await asyncio.gather(*(res.decider.decide(header_credential(sign(t, SECRET))) for t in tokens))
        assert res.redis is not None
        await res.redis.drain()  # the background writes
        assert res.store is not None
        return {v.reason for v in verdicts}, res.store.queries


def owners(cluster: list[RedisServer], tokens: list[str]) -> set[int]:
    """The ports of the nodes whose hash slots hold the sessions of ``tokens``."""
    with redis.Redis(port=cluster[0].port) as client:
        ranges = client.execute_command("CLUSTER SLOTS")  # [start, end, [host, port, ...], ...] each
    slots = [key_slot(f"bagw:v2:s:{token_hash(t)}".encode()) for t in tokens]
    return {node[1] for start, end, node, *_ in ranges for slot in slots if start <= slot <= end}


async def test_redis_cluster(db: asyncpg.Connection, database: str, cluster: list[RedisServer]) -> None:
    """With a cluster URL, sessions spread over the nodes and a fresh gateway reads all of them back in one go."""
    # 30 random sessions miss one of the 3 nodes 1 time in 64,000 (3 * (2/3)^30): drawn until they don't.
    tokens = await seeded(db, 30)
    while len(owners(cluster, tokens)) < len(cluster):
        tokens = await seeded(db, 30)
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster[:2])
    env = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": url} | PATIENT_REDIS
    settings = load_settings(env, {"listen": False})  # a listener's first connect flushes Redis
    assert await decide_all(settings, tokens) == ({Reason.ok}, 1)
    assert await decide_all(settings, tokens) == ({Reason.ok}, 0)  # every one from the cluster
    sizes = [len(list(redis.Redis(port=n.port).scan_iter(match="bagw:v2:s:*"))) for n in cluster]
    assert sum(sizes) == 30
    assert all(sizes)


async def test_redis_sentinel(db: asyncpg.Connection, database: str, own_redis: RedisServer, sentinel: int) -> None:
    """With a Sentinel URL, the gateway finds the master through Sentinel and caches there."""
    tokens = await seeded(db, 3)
    url = f"redis+sentinel://127.0.0.1:{sentinel}/gwmaster/0"
    env = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": url} | PATIENT_REDIS
    settings = load_settings(env, {"listen": False})
    assert await decide_all(settings, tokens) == ({Reason.ok}, 1)
    assert await decide_all(settings, tokens) == ({Reason.ok}, 0)
    master = redis.Redis(port=own_redis.port)
    assert all(master.exists(f"bagw:v2:s:{token_hash(t)}") for t in tokens)


async def test_a_cluster_decode_that_raises_answers_its_reads_as_misses(cluster: list[RedisServer]) -> None:
    """As on one server (``test_reads``): a decode that raises makes its batch's reads misses, a bystander's too.

    Raised out of the batch, it was every waiter's exception (a 500 for each request in the batch).
    """
    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    failures: list[CacheUnavailable] = []

    def decode(keys: Sequence[str], _values: list[Any]) -> list[SharedRead]:
        if "poison" in keys:
            raise RuntimeError("a decode that raises")
        return [SharedRead(None, 7)] * len(keys)

    reads = ClusterReads(
        client,
        "gwt:generation",
        timeout_s=5,
        max_size=100,
        decode=decode,
        failed=failures.append,
        observe=lambda _seconds: None,
    )
    try:
        asked = [reads.get(key) for key in ("bystander", "poison")]
        assert await asyncio.wait_for(asyncio.gather(*asked), 10) == [None, None]
        assert await asyncio.wait_for(reads.get("next"), 10) == SharedRead(None, 7)
        assert failures == []  # not Redis's failure: the tier stays on it
    finally:
        await reads.close()
        await client.aclose()
