"""Lookups racing revocations: what a lookup read before an invalidation never lands in Redis after it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.credentials.tokens import token_hash
from gateway.lookup.tiers import Tiers
from gateway.postgres import seed
from gateway.postgres.listener import Listener
from tests.support.credentials import cred
from tests.support.postgres import install_triggers
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import asyncpg
    import redis.asyncio as aioredis

    from gateway.core.sessions import Session
    from gateway.postgres.store import Store
    from tests.support.resources import Open


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
