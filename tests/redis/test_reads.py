"""The shared tier's pipelined reads against real Redis: one MGET per tick, misses (never hangs) on failure."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.config import load_settings
from gateway.core.errors import CacheUnavailable
from gateway.lookup.protocols import SharedRead
from gateway.redis.client import connect
from gateway.redis.reads import PipelinedReads
from gateway.redis.tier import RedisTier
from gateway.resources import value_configuration
from tests.redis.test_tier import ENV, digest, session
from tests.support.ports import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.redis.pipe import Pipe
    from gateway.redis.reads import Decode
    from tests.support.redis import RedisServer


def tier_on(url: str, prefix: str, observed: list[float] | None = None, **overrides: Any) -> RedisTier:
    settings = load_settings(ENV | {"REDIS_URL": url}, {"redis_prefix": prefix} | overrides)
    client = connect(url, timeout_s=settings.redis_timeout_s, pool_max_size=settings.redis_pool_max_size)
    observe = None if observed is None else observed.append
    return RedisTier(client, settings, value_configuration(settings), time.time, observe=observe)


ANSWER = SharedRead(None, 7)  # what the reads of ``reads_on`` answer, whatever Redis holds


def answering_all(keys: Sequence[str], _values: list[Any]) -> list[SharedRead]:
    return [ANSWER] * len(keys)


def reads_on(
    client: aioredis.Redis, failures: list[CacheUnavailable], *, max_size: int = 100, decode: Decode = answering_all
) -> PipelinedReads:
    """``PipelinedReads`` on ``client`` (1 s budget), each failure appended to ``failures``."""
    return PipelinedReads(
        client,
        "gwt:generation",
        timeout_s=1,
        max_size=max_size,
        decode=decode,
        failed=failures.append,
        observe=lambda _seconds: None,
    )


async def clients_of(url: str) -> int:
    probe = aioredis.Redis.from_url(url)
    try:
        return int((await probe.info("clients"))["connected_clients"]) - 1  # not counting the probe
    finally:
        await probe.aclose()


async def test_the_reads_of_one_tick_are_one_mget(redis_url: str, redis_prefix: str) -> None:
    """A hundred lookups asked in one tick go out as one MGET, and each gets its own session back."""
    observed: list[float] = []
    tier = tier_on(redis_url, redis_prefix, observed)
    try:
        for n in range(100):
            tier.put(digest(n), session(n), 0)
        await tier.drain()
        observed.clear()
        found = await asyncio.gather(*(tier.get(digest(n)) for n in range(101)))  # the last one: never written
        assert len(observed) == 1
        assert [f.session if f else "error" for f in found] == [*(session(n) for n in range(100)), None]
    finally:
        await tier.close()


async def test_reads_and_writes_share_one_connection(own_redis: RedisServer) -> None:
    """Reads, writes and revocations of a tier take one connection to Redis, whatever the load."""
    tier = tier_on(own_redis.url, "gwt")
    try:
        for n in range(200):
            tier.put(digest(n), session(n), 0)
        await asyncio.gather(tier.drain(), *(tier.get(digest(n)) for n in range(200)), tier.revoke([digest(7)]))
        assert await clients_of(own_redis.url) == 1
    finally:
        await tier.close()
    assert await clients_of(own_redis.url) == 0  # closed with the tier


async def test_a_paused_redis_is_a_miss_within_the_budget_then_recovers(own_redis: RedisServer) -> None:
    """Redis stops answering mid-pipeline: lookups waiting are misses after the budget, then Redis serves again."""
    tier = tier_on(own_redis.url, "gwt", redis_timeout_s=0.3, redis_backoff_s=0.05)
    assert own_redis.proc is not None
    try:
        tier.put(digest(1), session(1), 0)
        await tier.drain()
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            found = await asyncio.gather(*(tier.get(digest(1)) for _ in range(30)))
            assert found == [None] * 30  # an error for the tiers: they ask Postgres
            assert time.monotonic() - started < 1.5
            assert tier.degraded is not None
            assert "no reply within" in tier.degraded
            assert await tier.get(digest(1)) is None  # degraded: not even tried
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        await eventually(lambda: tier.degraded is None, within=5)
        tier.put(digest(2), session(2), tier.generation.floor)  # the recovery bumped the generation
        await tier.drain()
        back = await tier.get(digest(2))
        assert back is not None
        assert back.session == session(2)
    finally:
        await tier.close()


async def test_a_redis_killed_mid_pipeline_is_a_miss_at_once_then_recovers(own_redis: RedisServer) -> None:
    """Redis dies with reads in flight: they are misses at once (not at the budget's end); a new Redis is used."""
    tier = tier_on(own_redis.url, "gwt", redis_timeout_s=5.0, redis_backoff_s=0.05)
    assert own_redis.proc is not None
    try:
        assert await tier.get(digest(1)) is not None  # the pipe is open
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # the reads below are surely in flight when it dies
        reads = [tier.get(digest(n)) for n in range(20)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        own_redis.kill()
        assert await asyncio.gather(*reads) == [None] * 20
        assert time.monotonic() - started < 2
        own_redis.start()
        await eventually(lambda: tier.degraded is None, within=5)
        found = await tier.get(digest(1))
        assert found is not None
        assert found.session is None  # a miss on the new, empty Redis: not an error
    finally:
        await tier.close()


async def test_reads_before_the_first_connection_wait_for_it(own_redis: RedisServer) -> None:
    """Reads asked in several ticks before the pipe is open share the one connection made, then are sent."""
    tier = tier_on(own_redis.url, "gwt")
    try:
        first = [tier.get(digest(n)) for n in range(5)]
        await asyncio.sleep(0)
        second = [tier.get(digest(n)) for n in range(5, 10)]
        found = await asyncio.gather(*first, *second)
        assert all(f is not None and f.session is None for f in found)
        assert await clients_of(own_redis.url) == 1
    finally:
        await tier.close()


async def test_a_read_asked_as_a_failed_reconnection_ends_is_answered() -> None:
    """A read asked after a failed reconnection's last step, while a flush waits, is a miss: never stranded.

    The order that stranded it (test_scaling's Redis-cut instance hung): a flush queued before the
    reconnection's last step, which takes the reads asked so far; a read asked after that step,
    which the queued flush must send, though the ended reconnection's task is still in the set
    (its done-callback runs a tick later). Nothing listens on the port: each attempt fails at once.
    """
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    failures: list[CacheUnavailable] = []
    reads = reads_on(client, failures, decode=lambda _keys, _values: None)
    loop = asyncio.get_running_loop()
    asked: list[asyncio.Future[Any]] = []

    def as_the_attempt_fails(_attempt: object) -> None:
        # This tick queued the reconnection's last step; what is queued now runs after it.
        loop.call_soon(lambda: asked.append(reads.get("after its last step")))
        asked.append(reads.get("before its last step"))  # queues the flush, behind the read above

    try:
        first = reads.get("first")
        await asyncio.sleep(0)  # the flush starts the reconnection,
        await asyncio.sleep(0)  # whose first step starts the attempt
        attempt = reads._connecting  # the attempt whose end is the race
        assert attempt is not None
        attempt.add_done_callback(as_the_attempt_fails)
        assert await asyncio.wait_for(first, 5) is None
        await asyncio.sleep(0)
        assert len(asked) == 2
        assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [None, None]
        assert failures  # each attempt said so (the tier degrades on it)
    finally:
        await reads.close()
        await client.aclose()


async def test_a_read_whose_reconnection_is_lost_before_it_is_sent_is_answered(redis_url: str) -> None:
    """A reconnection whose new pipe is lost before it sends the reads waiting: they are misses, never stranded.

    Through a link that accepts a connection and drops it at once (test_scaling's cut proxy), the
    drop can be seen between the attempt's end and the reconnection's next step. The flush of the
    reads waiting then found a failed pipe and deferred to a reconnection, the very one running:
    nothing sent them, and their requests waited for ever. The pipe is dropped at that moment here.
    """
    client = aioredis.Redis.from_url(redis_url)
    failures: list[CacheUnavailable] = []
    reads = reads_on(client, failures)

    def lost_at_once(attempt: asyncio.Future[Pipe]) -> None:
        # Runs before the reconnection's next step (queued by this same completion, after it).
        attempt.result().close()

    try:
        waiting = reads.get("waiting")
        await asyncio.sleep(0)  # the flush starts the reconnection,
        await asyncio.sleep(0)  # whose first step starts the attempt
        attempt = reads._connecting
        assert attempt is not None
        attempt.add_done_callback(lost_at_once)
        assert await asyncio.wait_for(waiting, 5) is None  # a miss, at once
        assert failures  # the tier degrades on it
        assert await asyncio.wait_for(reads.get("next"), 5) == ANSWER  # the next read: a new pipe
    finally:
        await reads.close()
        await client.aclose()


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_a_value_too_deep_to_open_where_it_is_read_is_a_miss(redis_url: str, redis_prefix: str) -> None:
    """A value sealed a few frames up the stack from where it is opened is a miss there: never a stranded read.

    msgspec's depth limit is Python's recursion limit less the stack in use: a session whose JSON
    field (the user's to write, any depth) nests just under it is sealed by a loop callback and,
    opened deeper (the pipe's ``data_received``), raised ``RecursionError``: out of the pipe's
    callback, leaving every read of that ``MGET`` (a bystander's too) waiting for ever.
    """
    tier = tier_on(redis_url, redis_prefix)
    probe = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    depths = range(800, 1000)  # the stack in use is pytest's too: where the limit falls varies
    unopened = []
    try:
        for depth in depths:  # sealed as a source hit is: by a loop callback, not deep in a task
            deep = session(depth)
            deep = msgspec.structs.replace(deep, user={**deep.user, "prefs": nested(depth)})
            loop.call_soon(tier.put, digest(depth), deep, 0)
        await asyncio.sleep(0)
        await tier.drain()
        for depth in depths:
            found, bystander = await asyncio.wait_for(asyncio.gather(tier.get(digest(depth)), tier.get("b" * 64)), 5)
            assert found is not None  # read, not a Redis failure
            assert bystander == SharedRead(None, found.generation)
            if found.session is None and await probe.exists(tier.key(digest(depth))):
                unopened.append(depth)
        assert unopened  # sealed, stored, and too deep to open where it was read: the case
    finally:
        await tier.close()
        await probe.aclose()


async def test_a_decode_that_raises_still_answers_its_reads(redis_url: str) -> None:
    """Decoding raising inside the pipe's callback (a bug, a value no one foresaw): its reads are misses, not stranded.

    Raised out of ``data_received``, it left that ``MGET``'s reads waiting for ever, and asyncio
    closed the pipe under the others (the tier degraded over one value).
    """
    client = aioredis.Redis.from_url(redis_url)

    def decode(keys: Sequence[str], values: list[Any]) -> list[SharedRead]:
        if "poison" in keys:
            raise RuntimeError("a decode that raises")
        return answering_all(keys, values)

    # max_size 2: two MGETs in one reply's data, the poisoned batch, then the next.
    reads = reads_on(client, [], max_size=2, decode=decode)
    try:
        assert await asyncio.wait_for(reads.get("warm"), 5) == ANSWER  # the pipe is open
        asked = [reads.get(key) for key in ("bystander", "poison", "next", "last")]
        # The poisoned MGET's reads (a bystander's too) are misses; the pipe goes on with the next.
        assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [None, None, ANSWER, ANSWER]
        assert await asyncio.wait_for(reads.get("after"), 5) == ANSWER
    finally:
        await reads.close()
        await client.aclose()


async def test_a_host_no_resolver_takes_is_unavailable_never_a_wait() -> None:
    """A host the IDNA codec refuses (a label over 63 characters: a mistyped URL) is Redis unavailable.

    Connecting raises ``UnicodeError`` there, not ``OSError``: the reconnection died of it with the
    reads waiting, and so did every later read's, so every read waited for ever.
    """
    client = aioredis.Redis.from_url("redis://" + "a" * 70 + ".example:6379/0")
    failures: list[CacheUnavailable] = []
    reads = reads_on(client, failures)
    try:
        for key in ("first", "second"):
            assert await asyncio.wait_for(reads.get(key), 5) is None  # a miss, at once
        assert len(failures) == 2
        assert all("UnicodeError" in str(f) for f in failures)
        with pytest.raises(CacheUnavailable, match="UnicodeError"):
            await asyncio.wait_for(reads.ping(), 5)
    finally:
        await reads.close()
        await client.aclose()


class _Unmakeable(aioredis.Connection):
    """A connection class whose settings no connection takes (what no ``answering`` foresees)."""

    def __init__(self, **_: Any) -> None:
        raise ValueError("a setting no connection takes")


async def test_any_failure_to_connect_answers_the_reads_waiting() -> None:
    """Whatever connecting raises, not only what ``answering`` turns into ``CacheUnavailable``: misses, logged."""
    client = aioredis.Redis(connection_pool=aioredis.ConnectionPool(connection_class=_Unmakeable))
    failures: list[CacheUnavailable] = []
    reads = reads_on(client, failures)
    try:
        assert await asyncio.wait_for(reads.get("waiting"), 5) is None
        assert [str(f) for f in failures] == ["ValueError: a setting no connection takes"]
    finally:
        await reads.close()
        await client.aclose()
