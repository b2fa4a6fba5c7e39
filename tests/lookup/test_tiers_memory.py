"""The tiers over in-memory ports: fill-back, TTLs, negative entries, revocations during a lookup, flushes.

``test_tiers.py`` runs the same core against the real Postgres and Redis adapters.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from gateway.core.errors import BackendUnavailable, StoreUnavailable
from gateway.core.sessions import Reason
from gateway.credentials.tokens import token_hash
from gateway.lookup.outbox import CHUNK
from gateway.lookup.tiers import Tiers
from tests.support.memory import Clock, MemoryShared, MemorySource, session

if TYPE_CHECKING:
    from gateway.core.sessions import Session
    from gateway.lookup.protocols import Invalidator

TOKEN, OTHER = "a" * 32, "b" * 32
DIGEST = token_hash(TOKEN)


class World:
    """A source, maybe a shared cache, a clock, and tiers over them."""

    def __init__(self, *, shared: bool = True, **bounds: Any) -> None:
        self.clock = Clock()
        self.alice = session("alice", expires_at=self.clock.now + 3600)
        self.source = MemorySource({TOKEN: self.alice, OTHER: session("bob", expires_at=self.clock.now + 3600)})
        self.shared = MemoryShared() if shared else None
        self.tiers = self.worker(**bounds)

    def worker(self, **bounds: Any) -> Tiers:
        """Tiers of another worker over the same source, shared cache and clock."""
        options = {"max_entries": 100, "ttl_s": 60.0, "negative_max_entries": 100, "negative_ttl_s": 5.0} | bounds
        return Tiers(self.source, self.shared, clock=self.clock, **options)

    async def decide(self, token: str = TOKEN, key: str | None = None) -> Session | None:
        """What the decision does on a miss: load, then remember what was found under the key."""
        loaded = await self.tiers.load(token)
        if loaded.session is not None:
            self.tiers.remember(key or "k:" + token, loaded)
        return loaded.session


async def test_a_source_hit_fills_the_shared_cache_and_a_shared_hit_needs_no_source() -> None:
    """Postgres → Redis → LRU: a second worker is served from the shared cache, a repeat from the LRU."""
    world = World()
    assert world.shared is not None
    assert await world.decide() is world.alice
    assert world.source.calls == [[TOKEN]]
    assert [(d, g) for d, _, g in world.shared.puts] == [(DIGEST, 0)]
    assert world.tiers.cached("k:" + TOKEN) is not None
    other = world.worker()
    assert (await other.load(TOKEN)).session == world.alice
    assert world.source.queries == 1  # the shared cache answered
    assert len(world.shared.puts) == 1  # and a shared hit is not written back


async def test_the_shared_cache_is_read_before_the_source() -> None:
    """While the shared read is on its way, the source is not asked."""
    world = World()
    assert world.shared is not None
    world.shared.gate.close()
    load = asyncio.ensure_future(world.tiers.load(TOKEN))
    await world.shared.gate.arrived()
    assert world.source.calls == []
    world.shared.gate.open()
    assert (await load).session is world.alice
    assert world.source.calls == [[TOKEN]]


async def test_the_value_written_carries_the_generation_read_before_the_source() -> None:
    """A bump between the shared read and the source's answer leaves the value written unusable."""
    world = World()
    assert world.shared is not None
    world.source.gate.close()
    load = asyncio.ensure_future(world.tiers.load(TOKEN))
    await world.source.gate.arrived()
    world.shared.generation += 1  # another process flushed meanwhile
    world.source.gate.open()
    await load
    assert [g for _, _, g in world.shared.puts] == [0]
    assert (await world.shared.get(DIGEST)) == (None, 1)


async def test_concurrent_loads_of_one_token_share_one_read_of_each_tier() -> None:
    """Twenty callers of one cold token: one shared read, one source query, nineteen joins counted."""
    world = World()
    assert world.shared is not None
    world.source.gate.close()
    loads = [asyncio.ensure_future(world.tiers.load(TOKEN)) for _ in range(20)]
    await world.source.gate.arrived()
    assert world.tiers.joinable(TOKEN)
    world.source.gate.open()
    assert all(loaded.session is world.alice for loaded in await asyncio.gather(*loads))
    assert world.source.calls == [[TOKEN]]
    assert len(world.shared.puts) == 1
    assert world.tiers.metrics._counts[("e", "singleflight_join")] == 19


async def test_lru_ttl_and_expiry_with_an_injected_clock() -> None:
    """An LRU entry lasts the LRU TTL, never past the session's expiresAt."""
    world = World(shared=False)
    await world.decide()
    world.clock.advance(60)
    assert world.tiers.cached("k:" + TOKEN) is not None
    world.clock.advance(0.01)
    assert world.tiers.cached("k:" + TOKEN) is None
    world.source.sessions[TOKEN] = soon = session("alice", expires_at=world.clock.now + 10)
    assert await world.decide() is soon
    world.clock.advance(10.01)
    assert world.tiers.cached("k:" + TOKEN) is None


async def test_negative_entries_last_their_own_ttl_capped_by_the_positive_one_and_are_bounded() -> None:
    """A known-absent key answers for the negative TTL (never longer than the LRU TTL); the set is bounded."""
    world = World(negative_ttl_s=5.0, negative_max_entries=3)
    world.tiers.remember_absent("x", Reason.unknown_session)
    assert world.tiers.known_absent("x") is Reason.unknown_session
    world.clock.advance(5.01)
    assert world.tiers.known_absent("x") is None
    for key in "pqrs":
        world.tiers.remember_absent(key, Reason.expired)
    assert len(world.tiers.negative) == 3
    assert world.tiers.known_absent("p") is None  # the least recently used went
    capped = World(ttl_s=1.0, negative_ttl_s=60.0)
    capped.tiers.remember_absent("x", Reason.unknown_session)
    capped.clock.advance(1.01)
    assert capped.tiers.known_absent("x") is None


async def test_an_unknown_token_is_not_cached_anywhere() -> None:
    """No session: nothing is written to the shared cache or the LRU."""
    world = World()
    assert world.shared is not None
    assert (await world.tiers.load("z" * 32)).session is None
    assert world.shared.puts == []
    assert len(world.tiers.l1) == 0


@pytest.mark.parametrize("revoke", ["token", "user", "flush"])
async def test_a_revocation_during_a_lookup_is_never_cached_past(revoke: str) -> None:
    """Postgres read just before the token's (or user's) revocation, or a flush: neither cache gets the session."""
    world = World()
    assert world.shared is not None
    world.source.gate.close()
    load = asyncio.ensure_future(world.tiers.load(TOKEN))
    await world.source.gate.arrived()
    if revoke == "token":
        world.tiers.invalidate_token(DIGEST)
    elif revoke == "user":
        world.tiers.invalidate_user("alice")
    else:
        await world.tiers.flush()
    world.source.gate.open()
    loaded = await load
    assert loaded.session is world.alice  # what the source said, for this one decision
    world.tiers.remember("k", loaded)
    assert world.tiers.cached("k") is None
    assert world.shared.puts == []


async def test_a_shared_value_read_across_a_revocation_is_not_trusted() -> None:
    """A revocation heard during the shared read: the value it brings back goes unused, the source decides."""
    world = World()
    assert world.shared is not None
    world.shared.values[DIGEST] = (world.alice, 0)
    world.shared.gate.close()
    load = asyncio.ensure_future(world.tiers.load(TOKEN))
    await world.shared.gate.arrived()
    world.tiers.invalidate_token(DIGEST)
    world.source.sessions.pop(TOKEN)
    world.shared.gate.open()
    assert (await load).session is None
    assert world.source.calls == [[TOKEN]]


async def test_revocations_of_others_during_a_lookup_cost_it_nothing() -> None:
    """Anyone may NOTIFY: another token's or user's revocation does not stop a lookup from being cached."""
    world = World()
    assert world.shared is not None
    world.source.gate.close()
    load = asyncio.ensure_future(world.tiers.load(TOKEN))
    await world.source.gate.arrived()
    world.tiers.invalidate_token(token_hash(OTHER))
    world.tiers.invalidate_user("bob")
    world.source.gate.open()
    world.tiers.remember("k", await load)
    assert world.tiers.cached("k") is not None
    assert len(world.shared.puts) == 1


async def test_a_shared_value_of_a_token_or_user_revoked_lately_is_not_trusted() -> None:
    """A value naming a user heard revoked (its tombstone may still be on its way) sends the lookup to the source."""
    world = World()
    assert world.shared is not None
    world.shared.values[DIGEST] = (world.alice, 0)
    other = world.worker()
    other.invalidate_user("alice")
    world.source.sessions.pop(TOKEN)  # the source of truth: gone
    assert (await other.load(TOKEN)).session is None
    assert world.source.calls == [[TOKEN]]
    assert other.revoked_lately(DIGEST, "alice")


async def test_a_token_revoked_lately_is_looked_up_at_the_source_without_waiting_for_the_shared_cache() -> None:
    """Its shared value would not be trusted anyway: the lookup goes straight to the source, writes nothing back."""
    world = World()
    assert world.shared is not None
    world.shared.values[DIGEST] = (world.alice, 0)
    other = world.worker()
    sent = other.invalidate_token(DIGEST)  # an UPDATE of the session: still valid at the source
    assert sent is not None
    await sent
    world.shared.gate.close()  # a read of the shared cache would wait here for ever
    assert (await asyncio.wait_for(other.load(TOKEN), 5)).session is world.alice
    assert world.source.calls == [[TOKEN]]
    assert world.shared.puts == []
    bystander = asyncio.ensure_future(other.load(OTHER))  # not revoked: the shared cache first, as ever
    await world.shared.gate.arrived()
    assert world.source.calls == [[TOKEN]]
    world.shared.gate.open()
    await bystander


async def test_invalidation_evicts_every_key_of_a_token_or_user() -> None:
    """The LRU is indexed by token hash and user: an invalidation evicts every key caching them, and only those."""
    world = World(shared=False)
    await world.decide(key="cookie")
    await world.decide(key="bearer")
    await world.decide(OTHER, key="bob")
    world.tiers.invalidate_token(DIGEST)
    assert (world.tiers.cached("cookie"), world.tiers.cached("bearer")) == (None, None)
    assert world.tiers.cached("bob") is not None
    world.tiers.invalidate_user("bob")
    assert world.tiers.cached("bob") is None
    assert (world.tiers._by_digest, world.tiers._by_user) == ({}, {})


async def test_an_entry_leaving_the_lru_leaves_the_indexes() -> None:
    """Entries pushed out of a full LRU leave no index behind (the indexes stay bounded)."""
    world = World(shared=False, max_entries=1)
    await world.decide()
    await world.decide(OTHER)
    assert list(world.tiers._by_user) == ["bob"]
    assert list(world.tiers._by_digest) == [token_hash(OTHER)]


async def test_a_flush_forgets_everything_here_and_retires_the_shared_cache() -> None:
    """After a flush the LRU is empty and the shared values written before are misses for every worker."""
    world = World()
    assert world.shared is not None
    await world.decide()
    before = world.tiers.invalidations
    await world.tiers.flush()
    assert len(world.tiers.l1) == 0
    assert world.tiers.invalidations == before + 2  # before the bump, and after it (reads made meanwhile)
    assert world.shared.generation == 1
    assert (await world.worker().load(TOKEN)).session is world.alice
    assert world.source.queries == 2  # the shared value was retired


async def test_a_flush_under_way_trusts_no_shared_value() -> None:
    """Red team (issue 17) C: while a flush's bump is on its way, a value from before it answers nothing.

    A flush says notifications may have been missed; the bump that retires what the shared cache
    held may take up to its time budget. A lookup in between read a value from before it: a
    session signed out while nobody listened was served. The source answers instead.
    """
    world = World()
    assert world.shared is not None
    await world.decide()  # alice's session now in the shared cache
    del world.source.sessions[TOKEN]  # signed out while the listener was away: nobody heard it
    world.tiers.l1.clear()
    held = asyncio.Event()
    bump = world.shared.bump_generation

    async def slow_bump() -> bool:
        await held.wait()
        return await bump()

    world.shared.bump_generation = slow_bump  # type: ignore[method-assign]
    flushing = asyncio.ensure_future(world.tiers.flush())
    await asyncio.sleep(0)  # the flush is waiting on its bump
    assert not flushing.done()
    assert await world.decide() is None
    held.set()
    await flushing
    assert await world.decide() is None


async def test_an_overflowing_revocation_memory_sends_every_lookup_to_the_source() -> None:
    """More revocations in force than remembered: no shared value is trusted until the dropped one lapses."""
    world = World(revoked_max_entries=10, revoked_for_s=60.0)
    assert world.shared is not None
    world.shared.values[DIGEST] = (world.alice, 0)
    for i in range(11):
        world.tiers.invalidate_token(token_hash(f"forged{i}"))
    assert (await world.tiers.load(TOKEN)).session is world.alice
    assert world.source.queries == 1  # from the source, not the shared cache
    world.clock.advance(60.01)
    assert (await world.tiers.load(TOKEN)).session is world.alice
    assert world.source.queries == 1  # trusted again


async def test_an_unavailable_source_raises_and_an_unavailable_shared_cache_degrades() -> None:
    """The source failing is BackendUnavailable (the decision's 503); the shared cache failing is a miss."""
    world = World()
    assert world.shared is not None
    world.shared.failing = True
    assert (await world.tiers.load(TOKEN)).session is world.alice
    world.source.failing = True
    with pytest.raises(BackendUnavailable) as raised:
        await world.tiers.load(TOKEN)
    assert isinstance(raised.value, StoreUnavailable)
    world.shared.failing = False
    world.shared.values[DIGEST] = (world.alice, 0)
    assert (await world.tiers.load(TOKEN)).session is world.alice  # a shared hit needs no source


async def test_revocations_reach_the_shared_cache_in_batches() -> None:
    """A flood of revocations in one tick is one request per chunk of each kind, sent by one task."""
    world = World()
    assert world.shared is not None
    digests = [token_hash(f"t{i}") for i in range(CHUNK + 1)]
    works = {world.tiers.invalidate_token(d) for d in digests}
    works.add(world.tiers.invalidate_user("alice"))
    assert len(works) == 1  # one task sends them all
    (work,) = works
    assert work is not None
    await work
    assert [(kind, len(batch)) for kind, batch in world.shared.revocations] == [
        ("tokens", CHUNK),
        ("users", 1),
        ("tokens", 1),
    ]
    assert world.shared.tombstones >= set(digests)


async def test_without_a_shared_cache_invalidations_have_no_shared_work() -> None:
    """With no shared cache, an invalidation returns nothing to await."""
    world = World(shared=False)
    assert world.tiers.invalidate_token(DIGEST) is None
    assert world.tiers.invalidate_user("alice") is None
    await world.tiers.flush()


async def test_lookups_are_counted_by_tier_and_result() -> None:
    """L1, Redis and Postgres lookups are counted with their results."""
    world = World()
    await world.decide()
    world.tiers.cached("k:" + TOKEN)
    world.tiers.cached("nothing")
    counts = dict(world.tiers.metrics._counts)
    assert counts[("l", "redis", "miss")] == 1
    assert counts[("l", "postgres", "hit")] == 1
    assert counts[("l", "l1", "hit")] == counts[("l", "l1", "miss")] == 1


def test_tiers_are_an_invalidator() -> None:
    """The listeners' port: Tiers implements it (checked by mypy too)."""
    invalidator: Invalidator = World(shared=False).tiers
    assert invalidator.invalidate_token(DIGEST) is None
