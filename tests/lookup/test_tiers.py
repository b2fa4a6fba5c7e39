"""One behaviour suite, run against every tier configuration; then what only the tiers do."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign, token_hash
from gateway.postgres import seed
from tests.support.credentials import cred
from tests.support.redis import PATIENT_REDIS_S
from tests.support.resources import open_gateway
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import asyncpg

    from gateway.resources import Resources
    from tests.support.resources import Open

TIERS = {
    "postgres only": {"l1_max_entries": 0},
    "l1 + postgres": {},
    "redis + postgres": {"l1_max_entries": 0, "redis": True},
    "l1 + redis + postgres": {"redis": True},
}


@pytest.fixture
def gateway(database: str, redis_url: str, redis_prefix: str) -> Open:
    """Open the gateway's resources; ``redis=True`` adds the shared tier (a prefix of the test's own).

    The listener is off: these tests are about the tiers (its start would flush them at a moment
    of its choosing); test_invalidation covers it. Redis gets ``PATIENT_REDIS_S`` a command unless a
    test gives its budget (the subject of some).
    """

    def open_(*, redis: bool = False, **overrides: Any) -> AbstractAsyncContextManager[Resources]:
        shared = overrides.pop("redis_url", redis_url) if redis else None
        defaults: dict[str, Any] = {"redis_prefix": redis_prefix, "listen": False, "redis_timeout_s": PATIENT_REDIS_S}
        return open_gateway(database, redis_url=shared, **(defaults | overrides))

    return open_


async def drained(res: Resources) -> None:
    """Wait for the Redis tier's background writes (if it is on)."""
    if res.redis is not None:
        await res.redis.drain()


@pytest.mark.parametrize("tiers", TIERS.values(), ids=TIERS.keys())
async def test_every_tier_gives_the_same_verdicts(db: asyncpg.Connection, gateway: Open, tiers: dict[str, Any]) -> None:
    """Valid, unknown, expired, banned and forged give the same verdicts whichever tiers are on, cold and warm."""
    uid = await seed.create_user(db, email="tiers@example.com", role="user")
    banned = await seed.create_user(db, email="banned@example.com", banned=True)
    valid = await seed.create_session(db, uid)
    cases = {
        valid: Reason.ok,
        seed.generate_id(): Reason.unknown_session,
        await seed.create_session(db, uid, expires_in=dt.timedelta(seconds=-1)): Reason.expired,
        await seed.create_session(db, banned): Reason.banned,
    }
    async with gateway(**tiers) as res:
        for _ in range(2):  # cold, then warm
            for token, reason in cases.items():
                assert (await res.decider.decide(cred(token))).reason is reason
            assert (await res.decider.decide(header_credential(sign(valid, "x" * 40)))).reason is Reason.bad_signature
            await drained(res)
        verdict = await res.decider.decide(cred(valid))
    assert verdict.session is not None
    assert verdict.session.user["email"] == "tiers@example.com"


async def test_redis_hit_needs_no_postgres(db: asyncpg.Connection, gateway: Open) -> None:
    """A session found in Postgres by one gateway is served to another from Redis, with no query."""
    token = await seed.create_session(db, await seed.create_user(db, email="shared@example.com"))
    async with gateway(redis=True) as first:
        assert first.store is not None
        assert (await first.decider.decide(cred(token))).reason is Reason.ok
        assert first.store.queries == 1
        await drained(first)
    async with gateway(redis=True) as second:
        assert second.store is not None
        assert (await second.decider.decide(cred(token))).reason is Reason.ok
        assert second.store.queries == 0


async def test_keys_are_hashed_and_values_hold_no_token(
    db: asyncpg.Connection, gateway: Open, redis_url: str, redis_prefix: str
) -> None:
    """Redis keys are <prefix>:v2:s:<sha256(token)>; nothing in the keyspace contains a token."""
    tokens = [await seed.create_session(db, await seed.create_user(db, email=f"k{i}@example.com")) for i in range(5)]
    async with gateway(redis=True) as res:
        for token in tokens:
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
        await drained(res)
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:v2:s:*")]
    assert sorted(k.decode() for k in keys) == sorted(f"{redis_prefix}:v2:s:{token_hash(t)}" for t in tokens)
    everything = [k async for k in client.scan_iter()]
    for key in everything:
        kind = await client.type(key)
        value = await client.get(key) if kind == b"string" else b""
        members = await client.smembers(key) if kind == b"set" else set()  # the per-user index
        for token in tokens:
            assert token.encode() not in key
            assert token.encode() not in (value or b"")
            assert not any(token.encode() in m for m in members)
    ttl = await client.pttl(keys[0])
    assert 0 < ttl <= 300_000
    await client.aclose()


async def test_planted_value_without_valid_mac_is_ignored(
    db: asyncpg.Connection, gateway: Open, redis_url: str, redis_prefix: str
) -> None:
    """A value written to Redis by someone without the secret is a miss: no session is minted."""
    uid = await seed.create_user(db, email="real@example.com")
    real = await seed.create_session(db, uid)
    forged_token = seed.generate_id()
    async with gateway(redis=True) as res:
        assert (await res.decider.decide(cred(real))).reason is Reason.ok
        await drained(res)
        client = aioredis.Redis.from_url(redis_url)
        genuine = await client.get(f"{redis_prefix}:v2:s:{token_hash(real)}")
        assert isinstance(genuine, bytes)  # the client does not decode
        # Replay a genuine value under another token's key, and flip one byte of the genuine one.
        await client.set(f"{redis_prefix}:v2:s:{token_hash(forged_token)}", genuine)
        await client.set(f"{redis_prefix}:v2:s:{token_hash(real)}", genuine[:-1] + bytes([genuine[-1] ^ 1]))
        await client.aclose()
    async with gateway(redis=True) as fresh:
        assert fresh.store is not None
        assert (await fresh.decider.decide(cred(forged_token))).reason is Reason.unknown_session
        assert (await fresh.decider.decide(cred(real))).reason is Reason.ok
        assert fresh.store.queries == 2  # both fell through to Postgres


async def test_redis_ttl_never_past_expiry(
    db: asyncpg.Connection, gateway: Open, redis_url: str, redis_prefix: str
) -> None:
    """The Redis TTL is the smaller of the L2 TTL and the time to the session's expiresAt.

    Bounded by the clock around the write, not by a guess at how long opening the gateway takes:
    the TTL counts down to expiresAt from some moment between the lookup's start and the read.
    """
    token = await seed.create_session(
        db, await seed.create_user(db, email="ttl@example.com"), expires_in=dt.timedelta(seconds=20)
    )
    expires_at = (await db.fetchval('select "expiresAt" from "session" where token = $1', token)).timestamp()
    async with gateway(redis=True) as res:
        asked = time.time()
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        await drained(res)
        client = aioredis.Redis.from_url(redis_url)
        ttl = await client.pttl(f"{redis_prefix}:v2:s:{token_hash(token)}")
        read = time.time()
        await client.aclose()
    # Never past expiresAt (from the lookup's start), never short of it (at the read); 5 ms of rounding.
    assert (expires_at - read) * 1000 - 5 <= ttl <= (expires_at - asked) * 1000 + 5


async def test_concurrent_misses_batch_into_few_queries(db: asyncpg.Connection, gateway: Open) -> None:
    """100 different cold sessions asked for at once cost a handful of queries, not 100."""
    uid = await seed.create_user(db, email="batch@example.com")
    tokens = [await seed.create_session(db, uid) for _ in range(100)]
    async with gateway(redis=True) as res:
        assert res.store is not None
        verdicts = await asyncio.gather(*(res.decider.decide(cred(t)) for t in tokens))
        assert {v.reason for v in verdicts} == {Reason.ok}
        assert res.store.queries <= 3
        assert {v.session.session["id"] for v in verdicts if v.session} == set(
            await db.fetchval('select array_agg(id) from "session" where "userId" = $1', uid)
        )


async def test_single_flight_with_redis(db: asyncpg.Connection, gateway: Open) -> None:
    """300 concurrent requests for one cold session: one query; 300 forged: none."""
    token = await seed.create_session(db, await seed.create_user(db, email="sf@example.com"))
    async with gateway(redis=True) as res:
        assert res.store is not None
        verdicts = await asyncio.gather(*(res.decider.decide(cred(token)) for _ in range(300)))
        assert {v.reason for v in verdicts} == {Reason.ok}
        forged = header_credential(sign(token, "y" * 40))
        await asyncio.gather(*(res.decider.decide(forged) for _ in range(300)))
        assert res.store.queries == 1


async def test_negative_entries(db: asyncpg.Connection, gateway: Open) -> None:
    """A repeated unknown raw token costs one query until its short negative TTL ends; the set is bounded."""
    unknown = seed.generate_id()
    async with gateway(negative_ttl_s=2, negative_max_entries=100) as res:
        assert res.store is not None
        for _ in range(50):
            assert (await res.decider.decide(header_credential(unknown))).reason is Reason.unknown_session
        assert res.store.queries == 1
        res.tiers.l1.clock = res.tiers.negative.clock = lambda: time.time() + 3
        assert (await res.decider.decide(header_credential(unknown))).reason is Reason.unknown_session
        assert res.store.queries == 2
        for _ in range(300):
            await res.decider.decide(header_credential(seed.generate_id()))
        assert len(res.tiers.negative) == 100


async def test_negative_entry_never_outlives_a_new_session(db: asyncpg.Connection, gateway: Open) -> None:
    """The negative TTL is capped by the positive one."""
    async with gateway(l1_ttl_s=1, negative_ttl_s=60) as res:
        assert res.tiers._negative_ttl_s == 1


async def test_redis_down_degrades_to_postgres(db: asyncpg.Connection, gateway: Open, own_redis: Any) -> None:
    """With Redis gone, verdicts stay right (from Postgres), Redis is skipped, and it comes back by itself."""
    token = await seed.create_session(db, await seed.create_user(db, email="down@example.com"))
    async with gateway(redis=True, redis_url=own_redis.url, l1_max_entries=0, redis_backoff_s=0.1) as res:
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        own_redis.kill()
        started = time.monotonic()
        for _ in range(20):
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            assert (await res.decider.decide(cred(seed.generate_id()))).reason is Reason.unknown_session
        assert time.monotonic() - started < 5
        assert res.redis is not None
        assert res.redis.degraded is not None
        assert "redis" in (await res.pings()).degraded
        own_redis.start()
        redis_tier = res.redis
        await eventually(lambda: redis_tier.degraded is None, within=5)
        assert "redis" in (await res.pings()).ok


async def test_paused_redis_costs_at_most_the_budget(db: asyncpg.Connection, gateway: Open, own_redis: Any) -> None:
    """A Redis that stops answering costs a request at most the Redis budget, then is skipped."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    token = await seed.create_session(db, await seed.create_user(db, email="slow@example.com"))
    async with gateway(redis=True, redis_url=own_redis.url, l1_max_entries=0, redis_timeout_s=0.2) as res:
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            assert time.monotonic() - started < 1.5
            started = time.monotonic()
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            assert time.monotonic() - started < 0.5  # skipped now: straight to Postgres
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)


async def test_a_source_timeout_under_single_flight_is_every_callers_outage(
    db: asyncpg.Connection, database: str, gateway: Open
) -> None:
    """Red team of the fetch chained by callbacks: a Redis miss, then a Postgres past its budget.

    Every caller joined to the one fetch hears the outage (a 503 upstream, never a 401), nothing
    is cached as absent, and the session is found once Postgres answers again.
    """
    import asyncpg  # noqa: PLC0415  (a second connection, to hold the lock)

    token = await seed.create_session(db, await seed.create_user(db, email="timeout@example.com"))
    lock = await asyncpg.connect(database)
    try:
        async with gateway(redis=True, db_timeout_s=0.3) as res:
            async with lock.transaction():
                await lock.execute('lock table "session" in access exclusive mode')  # lookups now wait on Postgres
                verdicts = await asyncio.gather(*(res.decider.decide(cred(token)) for _ in range(20)))
            assert {v.reason for v in verdicts} == {Reason.backend_unavailable}
            assert len(res.tiers.negative) == 0
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
    finally:
        await lock.close()


async def test_a_revocation_during_a_redis_read_wins_over_it(
    db: asyncpg.Connection, gateway: Open, own_redis: Any
) -> None:
    """Red team of the fetch chained by callbacks: Redis answers a session revoked while its read waited.

    The read's callback runs after the revocation was heard: the value is not trusted, the caller
    that started the read gets Postgres's answer (no such session), and nothing caches it again.
    """
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    token = await seed.create_session(db, await seed.create_user(db, email="racing@example.com"))
    digest = token_hash(token)
    async with gateway(redis=True, redis_url=own_redis.url, l1_max_entries=0, redis_timeout_s=5) as res:
        assert res.redis is not None
        assert res.store is not None
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        await drained(res)
        assert (await res.decider.decide(cred(token))).reason is Reason.ok  # from Redis now
        queries = res.store.queries
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            first = asyncio.ensure_future(res.decider.decide(cred(token)))
            await asyncio.sleep(0.1)  # its Redis read is on the wire, unanswered
            await db.execute('delete from "session" where token = $1', token)
            work = res.tiers.invalidate_token(digest)  # as the listener hears the delete
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert (await first).reason is Reason.unknown_session
        assert res.store.queries == queries + 1  # the source decided
        if work is not None:
            await work
        await drained(res)
        shared = await res.redis.get(digest)
        assert shared is None or shared.session is None  # a tombstone, or nothing
        assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session


async def test_the_first_callers_going_away_leaves_the_shared_fetch_be(
    db: asyncpg.Connection, database: str, gateway: Open
) -> None:
    """Red team of the fetch chained by callbacks: the caller that started a fetch is cancelled mid-read.

    Those that joined it still get its answer, from the one query, and the session is cached.
    """
    import asyncpg  # noqa: PLC0415  (a second connection, to hold the lock)

    token = await seed.create_session(db, await seed.create_user(db, email="leaving@example.com"))
    lock = await asyncpg.connect(database)
    try:
        async with gateway(redis=True, db_timeout_s=5) as res:
            assert res.store is not None
            async with lock.transaction():
                await lock.execute('lock table "session" in access exclusive mode')  # lookups now wait on Postgres
                first = asyncio.ensure_future(res.decider.decide(cred(token)))
                await eventually(lambda: res.tiers.joinable(token))
                others = [asyncio.ensure_future(res.decider.decide(cred(token))) for _ in range(3)]
                await asyncio.sleep(0.05)
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
            assert {(await other).reason for other in others} == {Reason.ok}
            assert res.store.queries == 1
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            assert res.store.queries == 1  # cached by a caller that stayed
    finally:
        await lock.close()
