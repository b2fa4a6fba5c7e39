"""The LISTEN listener's shape and reconnects: jittered back-off over a real, cut link to Postgres."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import load_settings
from gateway.core.backoff import Backoff
from gateway.postgres.listener import Listener
from gateway.telemetry.metrics import Metrics
from tests.support.credentials import SECRET
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import asyncpg

    from gateway.lookup import protocols


class Caches:
    """An in-memory ``Invalidator``: what the listener told it."""

    def __init__(self) -> None:
        self.flushes = 0
        self.tokens: list[str] = []
        self.users: list[str] = []

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        self.tokens.append(digest)
        return None

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        self.users.append(user_id)
        return None

    async def flush(self) -> None:
        self.flushes += 1


class Draws:
    """A random source that records each ceiling it is asked for and waits a millisecond."""

    def __init__(self) -> None:
        self.ceilings: list[float] = []

    def __call__(self, lo: float, hi: float) -> float:
        assert lo == 0.0  # full jitter: anywhere from nothing to the ceiling
        self.ceilings.append(hi)
        return 0.001


def listener_for(dsn: str, caches: Caches, draws: Draws) -> Listener:
    settings = load_settings({"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET}, need=frozenset({"database"}))
    return Listener(settings, caches, Metrics(), backoff=Backoff(0.1, 1.0, uniform=draws))


async def test_reconnects_back_off_with_jitter_and_reset_once_connected(db: asyncpg.Connection, database: str) -> None:
    """Refused connects draw under 0.1, 0.2, 0.4 ... capped at 1; a working connection starts over."""
    proxy = await Proxy(database).start()
    proxy.cut()
    caches, draws = Caches(), Draws()
    listener: protocols.Listener = listener_for(proxy.dsn(), caches, draws)  # the one shape (mypy checks it)
    listener.start()
    try:
        await eventually(lambda: len(draws.ceilings) >= 6)
        assert draws.ceilings[:6] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        assert not listener.connected
        assert caches.flushes == 0
        proxy.restore()
        await eventually(lambda: listener.connected)
        assert caches.flushes == 1  # LISTEN in place: what was missed is forgotten
        heard = len(draws.ceilings)
        proxy.cut()
        await eventually(lambda: len(draws.ceilings) > heard)
        assert draws.ceilings[heard] == 0.1  # the first delay again, not the grown one
    finally:
        await listener.close()
        await proxy.close()


async def test_the_listener_takes_an_invalidator_not_the_tiers(db: asyncpg.Connection, database: str) -> None:
    """Any ``Invalidator`` will do: a NOTIFY of the triggers' shape reaches it."""
    caches, draws = Caches(), Draws()
    listener = listener_for(database, caches, draws)
    listener.start()
    try:
        await eventually(lambda: listener.connected)
        digest = "ab" * 32
        await db.execute("select pg_notify('better_auth_gateway', $1)", f"s:{digest}")
        await eventually(lambda: caches.tokens == [digest])
    finally:
        await listener.close()
