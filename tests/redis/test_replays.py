"""A session value copied out of Redis and written back, or the generation rolled back: never served."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

import pytest

from gateway.core.sessions import Reason
from gateway.credentials.tokens import token_hash
from gateway.postgres import seed
from gateway.postgres.listener import Listener
from gateway.redis.scripts import TOMBSTONE
from tests.redis.support import Clock, written
from tests.support.credentials import cred
from tests.support.postgres import install_triggers
from tests.support.waiting import eventually

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

    from gateway.resources import Resources
    from tests.support.resources import Open

CHANNEL = "better_auth_gateway"


@pytest.mark.parametrize(
    "later_s",
    [11, 61],
    ids=["after the 10 s revoked-lately memory", "after the value's own L2 TTL"],
)
async def test_value_copied_before_revocation_and_written_back_is_refused(
    db: asyncpg.Connection, database: str, gateway: Open, redis: aioredis.Redis, later_s: float
) -> None:
    """A value copied before a sign-out and written back once the tombstone lapsed is refused: Postgres says 401."""
    await install_triggers(database)
    token = await seed.create_session(db, await seed.create_user(db, email="replay@example.com"))
    clock = Clock()
    # Tombstones last 1.5 s (at least 2 x the Postgres and Redis budgets).
    short = {"redis_tombstone_s": 1.5, "db_timeout_s": 0.5, "redis_timeout_s": 0.25, "l2_ttl_s": 60}
    async with gateway(clock, **short) as res:
        _, key, copy = await copied_then_signed_out(db, res, redis, token)
        assert res.store is not None
        queries = res.store.queries  # the first lookup's, and the sign-out's recheck (``Decider.recheck``)
        clock.offset = later_s
        await redis.set(key, copy, px=600_000)  # and the copy goes back in
        assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
        assert res.store.queries == queries + 1  # refused from Redis, asked Postgres


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return await redis.get(key) is None


async def copied_then_signed_out(
    db: asyncpg.Connection, res: Resources, redis: aioredis.Redis, token: str, *, lapse_within: float = 5
) -> tuple[Listener, str, bytes]:
    """Someone with write access to Redis copies a session's value while it is valid; the user signs
    out, every tier hears it, and the revocation's tombstone lapses. The listener, the key, the copy."""
    listener = res.listener
    assert isinstance(listener, Listener)
    await eventually(lambda: listener.connected)
    assert (await res.decider.decide(cred(token))).reason is Reason.ok
    assert res.redis is not None
    key = res.redis.key(token_hash(token))
    copy = await written(res, redis, token)  # taken while the session is valid
    await db.execute('delete from "session" where token = $1', token)  # sign-out
    await eventually(lambda: listener.notifications == 1)
    await listener.settled()
    assert await redis.get(key) == TOMBSTONE
    await eventually(lambda: _gone(redis, key), within=lapse_within)  # the tombstone lapses
    return listener, key, copy


async def test_a_notify_flood_cannot_push_a_revocation_out_for_a_replayed_value(
    db: asyncpg.Connection, database: str, gateway: Open, redis: aioredis.Redis, stranger: asyncpg.Connection
) -> None:
    """Red team 13, finding 2: 100,001 forged ``s:`` notifications then a replayed value: still refused.

    Once a revocation's tombstone lapses, the worker's memory of revocations (100,000 entries) is
    what refuses a copy of the session's value written back. ``NOTIFY`` needs no privilege, so
    any role that may connect pushed the real revocation out, and the copy was served. Now a
    memory that drops an entry still in force trusts no Redis value until that entry would have
    lapsed: Postgres answers.
    """
    await install_triggers(database)
    token = await seed.create_session(db, await seed.create_user(db, email="replay-flood@example.com"))
    clock = Clock()
    # A generous Redis budget (2 s): the flood must not degrade Redis (which would bump the generation).
    short = {"redis_tombstone_s": 1.5, "db_timeout_s": 0.5, "redis_timeout_s": 2.0, "l2_ttl_s": 60}
    async with gateway(clock, **short) as res:
        listener, key, copy = await copied_then_signed_out(db, res, redis, token, lapse_within=15)
        clock.offset = 11  # well inside the value's own 60 s
        # The flood: paced batches of digests of the triggers' shape, from a role with no privilege.
        sent, batch = 0, 1000
        while sent < 100_001:
            await stranger.execute(
                "select count(pg_notify($1, 's:' || encode(sha256(('forged' || g)::bytea), 'hex'))) "
                "from generate_series($2::int, $3::int) g",
                CHANNEL,
                sent,
                sent + batch - 1,
            )
            sent += batch
            await eventually(functools.partial(heard, listener, 1 + sent), within=30)
            await listener.settled()
        assert res.redis is not None
        assert res.redis.degraded is None  # Redis never degraded: the generation never moved
        await redis.set(key, copy, px=600_000)  # the copy goes back in
        verdict = await res.decider.decide(cred(token))
        assert verdict.reason is Reason.unknown_session, "a signed-out session was served from a replayed Redis value"


async def test_a_process_started_after_a_revocation_never_serves_the_replayed_value(
    db: asyncpg.Connection, database: str, gateway: Open, redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Red team 13, finding 3: a lowered generation does not make a new process's startup bump land on an old one.

    A process that starts after a revocation has no memory of it and had seen no generation: its
    bump went to the generation found plus one, so with the counter set one below the current one,
    it landed on the very generation a copied value carries. A bump now goes above Redis's clock in
    milliseconds too, above every generation in use before the process started.
    """
    await install_triggers(database)
    token = await seed.create_session(db, await seed.create_user(db, email="replay-new-process@example.com"))
    gen_key = f"{redis_prefix}:v2:gen"
    short = {"redis_tombstone_s": 1.5, "db_timeout_s": 0.5, "redis_timeout_s": 0.25, "l2_ttl_s": 60}
    async with gateway(**short) as old:
        _, key, copy = await copied_then_signed_out(db, res=old, redis=redis, token=token)
        generation = int(await redis.get(gen_key) or 0)  # a sign-out bumps none: the copy's generation
    await redis.set(gen_key, generation - 1)  # someone with write access lowers it by one
    async with gateway(**short) as new:  # a new process starts and listens (and bumps)
        new_listener = new.listener
        assert isinstance(new_listener, Listener)
        await eventually(lambda: new_listener.connected)
        assert int(await redis.get(gen_key) or 0) > generation
        await redis.set(key, copy, px=600_000)  # the copy goes back in
        verdict = await new.decider.decide(cred(token))
        assert verdict.reason is Reason.unknown_session, "a new process served a replayed value"


async def test_a_lowered_generation_is_ignored(
    db: asyncpg.Connection, gateway: Open, redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Setting the generation back to before a bump revives nothing the bump retired, and is set back."""
    token = await seed.create_session(db, await seed.create_user(db, email="rollback@example.com"))
    async with gateway(listen=False, negative_max_entries=0) as res:
        assert res.redis is not None
        gen_key = f"{redis_prefix}:v2:gen"
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        await written(res, redis, token)
        before = int(await redis.get(gen_key) or 0)
        # Deleted while nobody listened; the listener's reconnect flushes: the value is retired.
        await db.execute('delete from "session" where token = $1', token)
        await res.tiers.flush()
        assert await _generation_above(redis, gen_key, before)
        await redis.set(gen_key, before)  # someone with write access sets it back
        assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
        assert res.store is not None
        assert res.store.queries == 2
        await eventually(lambda: _generation_above(redis, gen_key, before))
        # And the tier works again: a new session is written and served from Redis.
        fresh = await seed.create_session(db, await seed.create_user(db, email="after@example.com"))
        assert (await res.decider.decide(cred(fresh))).reason is Reason.ok
        await written(res, redis, fresh)
        res.tiers.l1.clear()
        assert (await res.decider.decide(cred(fresh))).reason is Reason.ok
        assert res.store.queries == 3


async def _generation_above(redis: aioredis.Redis, key: str, floor: int) -> bool:
    raw = await redis.get(key)
    return raw is not None and int(raw) > floor


@pytest.mark.parametrize("garbage", [b"not-a-number", b"1.5", b"-1", b"9" * 25])
async def test_a_garbage_generation_degrades_to_postgres(
    db: asyncpg.Connection,
    gateway: Open,
    redis: aioredis.Redis,
    redis_prefix: str,
    garbage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A generation that is not a small non-negative integer is a miss (counted, logged once), never a 500."""
    tokens = [await seed.create_session(db, await seed.create_user(db, email=f"g{i}@example.com")) for i in range(3)]
    async with gateway(listen=False, negative_max_entries=0, l1_max_entries=0) as res:
        assert res.redis is not None
        gen_key = f"{redis_prefix}:v2:gen"
        for token in tokens:
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            await written(res, redis, token)
        await redis.set(gen_key, garbage)
        with caplog.at_level(logging.WARNING, logger="gateway.redis"):
            verdicts = await asyncio.gather(*(res.decider.decide(cred(t)) for t in tokens * 3))
            assert {v.reason for v in verdicts} == {Reason.ok}
            await eventually(lambda: _is_generation(redis, gen_key))
            for token in tokens:  # and again, once it was set back
                assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert [r.getMessage() for r in caplog.records if "generation" in r.getMessage()] == [
            "the Redis generation was not a number (the highest seen here: 0); set to 0"
        ]
        res.metrics.flush()
        errors = res.metrics.registry.get_sample_value(
            "gateway_cache_lookups_total", {"tier": "redis", "result": "error"}
        )
        assert errors is not None
        assert errors >= 1
        assert res.redis.degraded is None


async def _is_generation(redis: aioredis.Redis, key: str) -> bool:
    raw = await redis.get(key)
    return raw is not None and raw.isdigit()


def heard(listener: Listener, n: int) -> bool:
    """Whether the listener has heard ``n`` notifications."""
    return listener.notifications == n
