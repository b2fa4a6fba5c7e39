"""The shared tier against someone who can write to Redis: replays, rolled-back or garbage generations, races."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from gateway.config.settings import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign, token_hash
from gateway.lookup.tiers import Tiers
from gateway.postgres import seed
from gateway.postgres.listener import Listener
from gateway.redis.scripts import TOMBSTONE
from gateway.redis.tier import tombstone_s
from gateway.resources import Resources, open_resources
from tests.conftest import SECRET, eventually, install_triggers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    import asyncpg

    from gateway.core.sessions import Session
    from gateway.postgres.store import Store

    Open = Callable[..., AbstractAsyncContextManager[Resources]]

CHANNEL = "better_auth_gateway"


class Clock:
    """Wall-clock time plus an offset the test moves: TTLs pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def gateway(database: str, redis_url: str, redis_prefix: str) -> Open:
    """Open the gateway's resources with Redis (a prefix of the test's own) and an injectable clock."""

    def open_(clock: Callable[[], float] = time.time, **overrides: Any) -> AbstractAsyncContextManager[Resources]:
        env = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": redis_url}
        settings = load_settings(env, {"redis_prefix": redis_prefix, "listener_check_s": 0.2} | overrides)
        return open_resources(settings, clock)

    return open_


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own: what someone with write access to Redis can do."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def cred(token: str) -> Any:
    return header_credential(sign(token, SECRET))


async def written(res: Resources, redis: aioredis.Redis, token: str) -> bytes:
    """The value the gateway's background write put in Redis for ``token`` (there is one)."""
    assert res.redis is not None
    await res.redis.drain()
    value = await redis.get(res.redis.key(token_hash(token)))
    assert isinstance(value, bytes)
    return value


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
    short = {"redis_tombstone_s": 1.5, "db_timeout_s": 0.5, "l2_ttl_s": 60}  # tombstones last 1.5 s
    async with gateway(clock, **short) as res:
        _, key, copy = await copied_then_signed_out(db, res, redis, token)
        clock.offset = later_s
        await redis.set(key, copy, px=600_000)  # and the copy goes back in
        assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
        assert res.store is not None
        assert res.store.queries == 2  # refused from Redis, asked Postgres


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
            await eventually(lambda n=sent: listener.notifications == 1 + n, within=30)
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
    short = {"redis_tombstone_s": 1.5, "db_timeout_s": 0.5, "l2_ttl_s": 60}
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


class HeldSource:
    """Postgres for real, but the answer is held until the test lets it go: a lookup stalled mid-way."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def fetch_many(self, tokens: Sequence[str]) -> Mapping[str, Session]:
        found = await self._store.fetch_many(tokens)
        self.read.set()
        await self.release.wait()
        return found


async def test_a_user_read_before_a_role_change_is_not_written_after_it(
    db: asyncpg.Connection, database: str, gateway: Open, redis: aioredis.Redis
) -> None:
    """A lookup that read the admin, then wrote Redis after the demotion was revoked there, leaves nothing to serve."""
    await install_triggers(database)
    uid = await seed.create_user(db, email="demoted@example.com", role="admin")
    token = await seed.create_session(db, uid)
    async with gateway() as q, gateway(listen=False) as p:
        listener = q.listener
        assert isinstance(listener, Listener)
        await eventually(lambda: listener.connected)  # its first connect bumps the generation
        assert p.store is not None
        assert p.redis is not None
        held = HeldSource(p.store)
        stalled = Tiers(held, p.redis, max_entries=0, ttl_s=30, negative_max_entries=0, negative_ttl_s=1)
        lookup = asyncio.ensure_future(stalled.load(token))
        await held.read.wait()  # it has read the admin from Postgres...
        await db.execute('update "user" set role = $2 where id = $1', uid, "user")
        await eventually(lambda: listener.notifications == 1)
        await listener.settled()  # ...every listener has revoked the user in Redis...
        held.release.set()
        loaded = await lookup  # ...and only now does it write what it read
        assert loaded.session is not None
        assert loaded.session.role == "admin"
        await p.redis.drain()
        found = await p.redis.get(token_hash(token))
        assert found is not None
        assert found.session is None
    async with gateway(listen=False) as fresh:  # a worker that heard nothing: what Redis offers it
        verdict = await fresh.decider.decide(cred(token))
        assert verdict.session is not None
        assert verdict.session.role == "user"


async def test_a_lookup_that_heard_an_invalidation_leaves_redis_alone(
    db: asyncpg.Connection, gateway: Open, redis: aioredis.Redis, redis_prefix: str
) -> None:
    """A lookup during which its worker heard its user revoked writes nothing to Redis: what it read may be stale."""
    uid = await seed.create_user(db, email="epoch@example.com")
    token = await seed.create_session(db, uid)
    async with gateway(listen=False) as p:
        assert p.store is not None
        assert p.redis is not None
        held = HeldSource(p.store)
        stalled = Tiers(held, p.redis, max_entries=0, ttl_s=30, negative_max_entries=0, negative_ttl_s=1)
        lookup = asyncio.ensure_future(stalled.load(token))
        await held.read.wait()
        work = stalled.invalidate_user(uid)
        assert work is not None
        await work
        await redis.delete(*await redis.keys(f"{redis_prefix}:v2:r:*"))  # no tombstone to refuse the write
        held.release.set()
        assert (await lookup).session is not None
        await p.redis.drain()
        assert await redis.get(p.redis.key(token_hash(token))) is None


async def test_invalidations_of_others_do_not_stop_a_lookup_from_being_cached(
    db: asyncpg.Connection, gateway: Open, redis: aioredis.Redis
) -> None:
    """Red team 13, finding 5: a trickle of forged ``s:``/``u:`` (anyone may NOTIFY) no longer keeps lookups uncached.

    Every invalidation bumped one global epoch, and a lookup that saw it move cached nothing: a
    forged notification every few milliseconds left every cold session uncached. Only an
    invalidation of the lookup's own token or user (or a flush) counts now.
    """
    token = await seed.create_session(db, await seed.create_user(db, email="others@example.com"))
    async with gateway(listen=False) as p:
        assert p.store is not None
        assert p.redis is not None
        held = HeldSource(p.store)
        stalled = Tiers(held, p.redis, max_entries=10, ttl_s=30, negative_max_entries=0, negative_ttl_s=1)
        lookup = asyncio.ensure_future(stalled.load(token))
        await held.read.wait()
        for work in (
            stalled.invalidate_token(token_hash(seed.generate_id())),
            stalled.invalidate_user(seed.generate_id()),
        ):
            assert work is not None
            await work
        held.release.set()
        loaded = await lookup
        assert loaded.session is not None
        stalled.remember("k", loaded)
        assert stalled.cached("k") is not None  # the LRU keeps it
        await p.redis.drain()
        found = await p.redis.get(token_hash(token))
        assert found is not None
        assert found.session is not None  # and so does Redis


def test_tombstones_outlast_the_slowest_lookup() -> None:
    """GATEWAY_REDIS_TOMBSTONE_S is raised to 2 x (db + Redis budgets): a lookup can't write past its tombstone."""
    env = {"DATABASE_URL": "postgresql://x/y", "BETTER_AUTH_SECRET": SECRET}
    assert tombstone_s(load_settings(env, {"redis_tombstone_s": 0.1})) == 2 * (2.0 + 0.25)
    assert tombstone_s(load_settings(env, {"redis_tombstone_s": 30})) == 30


@pytest.mark.parametrize(
    ("overrides", "user_field", "session_field"),
    [
        ({"user_hidden_fields": "email"}, "email", None),
        ({"session_hidden_fields": "ipAddress,userAgent"}, None, "ipAddress"),
    ],
    ids=["user field hidden", "session field hidden"],
)
async def test_a_redis_value_written_under_other_fields_never_answers_a_hidden_field(
    db: asyncpg.Connection,
    database: str,
    gateway: Open,
    overrides: dict[str, str],
    user_field: str | None,
    session_field: str | None,
) -> None:
    """Red team 13: the value's MAC did not cover which fields may be answered.

    Two gateways sharing Redis (same secret, same prefix), one answering everything, one with a
    field hidden (or the same gateway across a rolling restart that changes the fields): the
    second answered what the first cached as it was, the hidden field included. The MAC key now
    depends on the answered fields and the table mapping: the other's value is a miss.
    """
    await install_triggers(database)
    token = await seed.create_session(db, await seed.create_user(db, email="hidden@example.com"))
    await db.execute("""update "session" set "ipAddress" = '203.0.113.7' where token = $1""", token)
    # No listener: no startup flush retires the values this test shares between the gateways.
    quiet = {"listen": False}
    async with gateway(**quiet) as trusted, gateway(**quiet) as twin, gateway(**quiet, **overrides) as untrusted:
        verdict = await trusted.decider.decide(cred(token))
        assert verdict.session is not None
        assert verdict.session.user["email"] == "hidden@example.com"
        assert verdict.session.session["ipAddress"] == "203.0.113.7"
        assert trusted.redis is not None
        assert untrusted.store is not None
        assert twin.store is not None
        await trusted.redis.drain()  # the trusted gateway's value is in Redis
        # A gateway of the same configuration shares it (no query).
        assert (await twin.decider.decide(cred(token))).reason is Reason.ok
        assert twin.store.queries == 0
        verdict = await untrusted.decider.decide(cred(token))
        assert verdict.session is not None
        assert untrusted.store.queries == 1, "served from the other configuration's Redis value"
        assert user_field is None or user_field not in verdict.session.user
        assert session_field is None or session_field not in verdict.session.session


async def test_a_large_number_in_a_json_field_is_answered_and_cached(
    db: asyncpg.Connection, gateway: Open, redis: aioredis.Redis
) -> None:
    """Red team 13: a user-written ``json`` field holding ``1e29`` (a plain JavaScript number).

    ``jsonb`` gives it back as thirty digits; as a Python ``int`` past 2**64 the Redis write's
    msgpack raised ``OverflowError`` inside the lookup: a 500 for every request of that user
    while Better Auth answers 200. Read as ``JSON.parse`` reads it, it is the double ``1e29``.
    """
    await db.execute('alter table "user" add column prefs jsonb')
    user = await seed.create_user(db, email="big-number@example.com")
    await db.execute("""update "user" set prefs = '{"x": 1e+29, "y": 9007199254740993}'::jsonb where id = $1""", user)
    token = await seed.create_session(db, user)
    async with gateway(user_additional_fields="prefs", listen=False) as res:
        verdict = await res.decider.decide(cred(token))
        assert verdict.reason is Reason.ok
        assert verdict.session is not None
        assert verdict.session.user["prefs"] == {"x": 1e29, "y": 9007199254740992}  # JavaScript's doubles
        assert type(verdict.session.user["prefs"]["x"]) is float
        assert res.redis is not None
        await written(res, redis, token)  # cached as any other value


async def test_a_value_redis_cannot_hold_is_not_cached_and_no_error(
    db: asyncpg.Connection, gateway: Open, redis: aioredis.Redis
) -> None:
    """A ``json`` field too deep for any Python decoder is answered verbatim, and simply not cached in Redis."""
    await db.execute('alter table "user" add column prefs jsonb')
    user = await seed.create_user(db, email="too-deep@example.com")
    await db.execute('update "user" set prefs = $1::jsonb where id = $2', "[" * 1500 + "]" * 1500, user)
    token = await seed.create_session(db, user)
    async with gateway(user_additional_fields="prefs", listen=False) as res:
        for _ in range(2):
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            res.tiers.l1.clear()
        assert res.redis is not None
        await res.redis.drain()
        assert await redis.get(res.redis.key(token_hash(token))) is None
        assert res.store is not None
        assert res.store.queries == 2  # each lookup from Postgres: nothing in Redis to read
