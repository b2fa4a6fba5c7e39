"""The pipelined connection against real Redis servers: order, error replies, and failing on time, never hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ResponseError

from gateway.redis.client import connect
from gateway.redis.pipe import Pipe, PipeFailed, open_pipe, pack
from tests.support.redis import RedisServer
from tests.support.tcp_proxy import Proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


async def opened(url: str, timeout_s: float = 2.0) -> Pipe:
    client = connect(url, timeout_s=timeout_s, pool_max_size=1)
    assert isinstance(client, aioredis.Redis)
    try:
        return await open_pipe(client, timeout_s)
    finally:
        await client.aclose()


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[Pipe]:
    pipe = await opened(redis_url)
    yield pipe
    pipe.close()


@pytest.fixture
def paused() -> Iterator[list[RedisServer]]:
    """Servers the test SIGSTOPs: continued at the end, whatever happened."""
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)


def pause(server: RedisServer, paused: list[RedisServer]) -> None:
    assert server.proc is not None
    paused.append(server)
    os.kill(server.proc.pid, signal.SIGSTOP)


async def test_replies_go_to_their_commands_in_order(pipe: Pipe, redis_prefix: str) -> None:
    """Hundreds of commands in flight at once each get their own reply: replies are matched in order."""
    key = f"{redis_prefix}:n"
    calls = [pipe.call("INCR", key) for _ in range(300)]
    calls += [pipe.call("SET", f"{redis_prefix}:{n}", n) for n in range(100)]
    calls += [pipe.call("GET", f"{redis_prefix}:{n}") for n in range(100)]
    replies = await asyncio.gather(*calls)
    assert replies[:300] == list(range(1, 301))
    assert replies[300:400] == [b"OK"] * 100
    assert replies[400:] == [str(n).encode() for n in range(100)]
    await pipe.call("DEL", key, *(f"{redis_prefix}:{n}" for n in range(100)))


async def test_an_error_reply_fails_its_command_only(pipe: Pipe, redis_prefix: str) -> None:
    """An error reply raises for its command; the commands around it, and later ones, are answered."""
    key = f"{redis_prefix}:text"
    before, wrong, after = pipe.call("SET", key, "x"), pipe.call("INCR", key), pipe.call("GET", key)
    assert await before == b"OK"
    with pytest.raises(ResponseError, match="not an integer"):
        await wrong
    assert await after == b"x"
    assert pipe.failure is None
    assert await pipe.call("DEL", key) == 1


async def test_a_reply_spread_over_many_reads_is_read_whole(pipe: Pipe, redis_prefix: str) -> None:
    """A value of several megabytes arrives in many pieces: hiredis puts it back together."""
    key, value = f"{redis_prefix}:big", os.urandom(3_000_000)
    await pipe.call("SET", key, value)
    assert list(await asyncio.gather(pipe.call("GET", key), pipe.call("PING"))) == [value, b"PONG"]
    await pipe.call("DEL", key)


async def test_a_paused_redis_fails_every_waiter_within_the_budget(
    own_redis: RedisServer, paused: list[RedisServer]
) -> None:
    """Commands in flight to a Redis that stopped answering fail with ``PipeFailed`` after the budget, not later."""
    pipe = await opened(own_redis.url, timeout_s=0.3)
    assert await pipe.call("PING") == b"PONG"
    pause(own_redis, paused)
    started = time.monotonic()
    calls = [pipe.call("GET", f"k{n}") for n in range(50)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, PipeFailed) for r in results)
    assert 0.25 <= time.monotonic() - started < 1.5
    assert "no reply within 0.3s" in str(pipe.failure)
    with pytest.raises(PipeFailed):  # a failed pipe is finished: it never sends again
        await pipe.call("PING")


async def test_a_waiter_sent_later_gets_its_own_budget(own_redis: RedisServer, paused: list[RedisServer]) -> None:
    """One timer watches the oldest command: a command sent just before the oldest expires is failed with it."""
    pipe = await opened(own_redis.url, timeout_s=0.4)
    pause(own_redis, paused)
    first = pipe.call("PING")
    await asyncio.sleep(0.2)
    second = pipe.call("PING")
    started = time.monotonic()
    with pytest.raises(PipeFailed):
        await first
    assert time.monotonic() - started < 0.35  # the first one's budget, not the second one's
    with pytest.raises(PipeFailed):
        await second


async def test_a_killed_redis_fails_every_waiter_at_once(own_redis: RedisServer, paused: list[RedisServer]) -> None:
    """A Redis killed with commands in flight: the closed connection fails them at once, not at the budget's end."""
    pipe = await opened(own_redis.url, timeout_s=10)
    pause(own_redis, paused)  # so that the commands are surely in flight when it dies
    calls = [pipe.call("GET", f"k{n}") for n in range(20)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    own_redis.kill()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, PipeFailed) for r in results)
    assert time.monotonic() - started < 2
    assert "connection lost" in str(pipe.failure)


async def test_a_black_hole_fails_the_first_command_within_the_budget(redis_url: str) -> None:
    """A link that accepts the connection and carries nothing: the first command fails in the budget, never hangs."""
    proxy = await Proxy(redis_url.replace("redis://", "postgresql://")).start()
    try:
        proxy.stalled = True
        pipe = await opened(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.3)  # nothing to say before a command
        started = time.monotonic()
        with pytest.raises(PipeFailed, match="no reply within"):
            await pipe.call("PING")
        assert time.monotonic() - started < 1.5
    finally:
        await proxy.close()


async def test_a_black_hole_fails_the_handshake_within_the_budget(redis_url: str) -> None:
    """With a password to send, a link that carries nothing fails the opening itself within the budget."""
    proxy = await Proxy(redis_url.replace("redis://", "postgresql://")).start()
    try:
        proxy.stalled = True
        started = time.monotonic()
        with pytest.raises((TimeoutError, PipeFailed)):
            await opened(f"redis://:pw@127.0.0.1:{proxy.port}/0", timeout_s=0.3)
        assert time.monotonic() - started < 1.5
    finally:
        await proxy.close()


async def test_a_password_and_a_database_from_the_url(tmp_path: Path) -> None:
    """The pipe logs in with the URL's user and password and selects its database; a wrong password is refused."""
    server = RedisServer(tmp_path)
    try:
        setup = aioredis.Redis(port=server.port)
        await setup.config_set("requirepass", "s3cret")
        await setup.aclose()
        pipe = await opened(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await pipe.call("SET", "where", "db3")
        pipe.close()
        check = aioredis.Redis(port=server.port, password="s3cret", db=3)
        assert await check.get("where") == b"db3"
        await check.aclose()
        with pytest.raises(ResponseError, match=r"WRONGPASS|invalid password"):
            await opened(f"redis://:wrong@127.0.0.1:{server.port}/0")
    finally:
        server.kill()


async def test_a_unix_socket(tmp_path: Path) -> None:
    """``unix://`` URLs reach Redis over its Unix socket, in the database the URL names."""
    path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, "--unixsocket", str(path), "--unixsocketperm", "700")
    try:
        pipe = await opened(f"unix://{path}?db=2")
        assert await pipe.call("SET", "via", "unix") == b"OK"
        pipe.close()
        check = aioredis.Redis(port=server.port, db=2)
        assert await check.get("via") == b"unix"
        await check.aclose()
    finally:
        server.kill()


def test_pack_writes_resp_arrays_of_bulk_strings() -> None:
    """Commands go out as RESP arrays of bulk strings, whatever the arguments' types."""
    assert pack(("MGET", b"a", 7)) == b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\n7\r\n"


def test_a_reply_that_arrived_while_the_loop_was_busy_counts(redis_url: str) -> None:
    """On uvloop, a reply that came in time while the loop was stuck past the budget is answered, not failed."""

    async def scenario() -> None:
        pipe = await opened(redis_url, timeout_s=0.2)
        try:
            ping = pipe.call("PING")
            time.sleep(0.4)  # noqa: ASYNC251  (the loop stuck past the budget while Redis answers)
            assert await ping == b"PONG"
            assert pipe.failure is None
        finally:
            pipe.close()

    uvloop.run(scenario())
