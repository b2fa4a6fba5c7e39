"""The sliding refresh's core over in-memory ports: the due rule, one write per worker, the caches after.

``tests/postgres/test_refresh.py`` runs the real write; ``tests/e2e/test_sliding_refresh.py`` compares
it with the real Better Auth.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from gateway.core.errors import StoreUnavailable
from gateway.credentials.tokens import token_hash
from gateway.lookup.flights import Loaded
from gateway.lookup.refresh import Outcome, Refresher, Rule, Slid
from gateway.lookup.tiers import Tiers
from tests.support.memory import Clock, Gate, MemoryShared, MemorySource, session

if TYPE_CHECKING:
    from gateway.core.sessions import Session

TOKEN = "a" * 32
DIGEST = token_hash(TOKEN)
KEY = "k:" + TOKEN
WEEK, DAY = 7 * 86400.0, 86400.0


class MemoryWriter:
    """A ``SessionWriter`` over one row: slides it if due (as the SQL's condition does), held at a gate."""

    def __init__(self, clock: Clock, row: Session | None) -> None:
        self.clock, self.row = clock, row
        self.gate = Gate()
        self.calls = 0
        self.failing = False

    async def slide(self, token: str, now_ms: int) -> Slid:
        self.calls += 1
        await self.gate()
        if self.failing:
            msg = "Postgres: away"
            raise StoreUnavailable(msg)
        now = now_ms / 1000
        row = self.row
        if row is None or token != TOKEN or row.expires_at <= now:
            return Slid(None, written=False)
        if row.expires_at > now + WEEK - DAY:
            return Slid(row, written=False)
        self.row = msgspec.structs.replace(row, expires_at=now + WEEK)
        return Slid(self.row, written=True)


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.aged = session("alice", expires_at=self.clock.now + 5 * DAY)
        self.shared = MemoryShared()
        self.tiers = Tiers(
            MemorySource({TOKEN: self.aged}),
            self.shared,
            max_entries=100,
            ttl_s=60.0,
            negative_max_entries=100,
            negative_ttl_s=5.0,
            clock=self.clock,
        )
        self.writer = MemoryWriter(self.clock, self.aged)
        self.refresher = Refresher(self.writer, self.tiers, Rule(WEEK, DAY), self.clock)
        self.tiers.remember(KEY, Loaded(self.aged, DIGEST, self.tiers.invalidations))

    def refresh(self) -> asyncio.Future[object]:
        return asyncio.ensure_future(self.refresher.refresh(KEY, TOKEN, DIGEST, self.aged))


def test_due_is_better_auths_rule_at_its_boundary() -> None:
    """Due exactly when expiresAt - expiresIn + updateAge <= now; updateAge 0 makes every read due."""
    rule, now = Rule(WEEK, DAY), 1_000_000.0
    assert rule.due(session(expires_at=now + WEEK - DAY), now)
    assert not rule.due(session(expires_at=now + WEEK - DAY + 0.001), now)
    assert Rule(WEEK, 0).due(session(expires_at=now + WEEK), now)
    assert not Rule(WEEK, 0).due(session(expires_at=now + WEEK + 0.001), now)


async def test_a_slide_replaces_the_lru_entry_and_the_shared_value() -> None:
    """The slid row is what the LRU and the shared cache hold afterwards (under the generation read)."""
    world = World()
    refreshed = await world.refresh()
    assert refreshed == (world.writer.row, Outcome.written)
    entry = world.tiers.l1.get(KEY)
    assert entry is not None
    assert entry.session == world.writer.row
    assert world.shared.values[DIGEST] == (world.writer.row, 0)


async def test_concurrent_refreshes_in_a_worker_share_one_write() -> None:
    """Eight refreshes of one token at once: one write, every caller answered with its row."""
    world = World()
    world.writer.gate.close()
    calls = [world.refresh() for _ in range(8)]
    await world.writer.gate.arrived()
    world.writer.gate.open()
    results = await asyncio.gather(*calls)
    assert world.writer.calls == 1
    assert [r.outcome for r in results].count(Outcome.written) == 1  # type: ignore[attr-defined]
    assert all(r.session == world.writer.row for r in results)  # type: ignore[attr-defined]


async def test_a_revocation_heard_during_the_write_wins() -> None:
    """A token revoked while its slide was being written: the slid row enters no cache."""
    world = World()
    world.writer.gate.close()
    call = world.refresh()
    await world.writer.gate.arrived()  # the write has begun
    world.tiers.invalidate_token(DIGEST)
    world.writer.gate.open()
    await call
    assert world.tiers.l1.get(KEY) is None
    assert DIGEST not in world.shared.values


async def test_unavailable_answers_the_session_as_read_and_gone_evicts() -> None:
    """Postgres away: the session as read, the entry kept; the row gone: no session, the entry evicted."""
    world = World()
    world.writer.failing = True
    assert await world.refresh() == (world.aged, Outcome.unavailable)
    assert world.tiers.l1.get(KEY) is not None
    world.writer.failing, world.writer.row = False, None
    assert await world.refresh() == (None, Outcome.gone)
    assert world.tiers.l1.get(KEY) is None
