"""The shared tier inside the gateway: tombstone lifetimes, values bound to the fields answered, odd values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import token_hash
from gateway.postgres import seed
from gateway.redis.tier import tombstone_s
from tests.redis.support import written
from tests.support.credentials import SECRET, cred
from tests.support.postgres import install_triggers

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

    from tests.support.resources import Open


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
