"""In-memory implementations of the core's ports (``gateway.lookup.protocols``), for fast unit tests.

Faithful to the protocols' contracts: ``MemorySource.fetch_many`` raises ``StoreUnavailable``
when told to fail; ``MemoryShared`` never raises (it answers ``None``, drops the write or returns
``False`` instead) and never lets a put replace a revocation. Every call can be held at a
``Gate`` the test opens when it chooses: no sleeps, no timing. The adapters that implement the
same ports for real (``gateway.postgres.store``, ``gateway.redis.tier``) are tested against the
real services.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import TYPE_CHECKING

from gateway.core.errors import StoreUnavailable
from gateway.core.sessions import Session
from gateway.lookup.protocols import SharedRead

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from gateway.lookup.protocols import Invalidator, SessionSource, SharedCache


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class Gate:
    """Where calls wait while it is closed; tells the test when one arrived. Open by default."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._arrived = asyncio.Event()
        self.waiting = 0

    def close(self) -> None:
        """Hold every call arriving from now on."""
        self._open.clear()

    def open(self) -> None:
        """Let every held call (and every later one) through."""
        self._open.set()

    async def arrived(self, count: int = 1) -> None:
        """Wait until ``count`` calls are held here."""
        while self.waiting < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def __call__(self) -> None:
        """Pass, or wait until opened."""
        if self._open.is_set():
            return
        self.waiting += 1
        self._arrived.set()
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1


def session(user_id: str = "u1", *, expires_at: float = math.inf, banned_until: float = 0.0, sid: str = "") -> Session:
    """A session of ``user_id`` (Better Auth's JSON shape, no token); valid for ever unless told."""
    sid = sid or f"s-{user_id}"
    moment = (
        dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
        if math.isinf(expires_at)
        else dt.datetime.fromtimestamp(expires_at, dt.UTC)
    )
    expires = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # as Better Auth writes dates
    return Session(
        expires_at=expires_at,
        banned_until=banned_until,
        session={"id": sid, "userId": user_id, "expiresAt": expires},
        user={"id": user_id, "email": f"{user_id}@example.com"},
    )


class MemorySource:
    """A ``SessionSource``: sessions by token, every bulk call recorded, failures on demand."""

    def __init__(self, sessions: Mapping[str, Session] | None = None) -> None:
        self.sessions: dict[str, Session] = dict(sessions or {})
        self.calls: list[list[str]] = []  # the tokens of each bulk call, in order
        self.gate = Gate()
        self.failing = False  # raise StoreUnavailable (after the gate)

    @property
    def queries(self) -> int:
        """How many bulk calls were made."""
        return len(self.calls)

    async def fetch_many(self, tokens: Sequence[str]) -> Mapping[str, Session]:
        """Sessions by token; ``StoreUnavailable`` while ``failing``."""
        self.calls.append(list(tokens))
        await self.gate()
        if self.failing:
            raise StoreUnavailable("the memory source was told to fail")
        return {t: self.sessions[t] for t in tokens if t in self.sessions}


class MemoryShared:
    """A ``SharedCache``: values by token hash under a generation; tombstones; never raises."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[Session, int]] = {}
        self.generation = 0
        self.tombstones: set[str] = set()  # token hashes
        self.revoked_users: set[str] = set()
        self.puts: list[tuple[str, Session, int]] = []  # every put asked for, written or not
        self.revocations: list[tuple[str, list[str]]] = []  # ("tokens" | "users", batch), in order
        self.gate = Gate()  # holds get, revoke, revoke_users and bump_generation
        self.failing = False  # unavailable: get answers None, puts are dropped, bumps fail

    async def get(self, token_digest: str) -> SharedRead | None:
        """The session cached under a token hash and the generation read; ``None`` while failing."""
        await self.gate()
        if self.failing:
            return None
        found = self.values.get(token_digest)
        if found is None or found[1] != self.generation or token_digest in self.tombstones:
            return SharedRead(None, self.generation)
        return SharedRead(found[0], self.generation)

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Cache ``session`` unless failing or revoked (a tombstone, a revoked user)."""
        self.puts.append((token_digest, session, generation))
        if self.failing or token_digest in self.tombstones or session.user_id in self.revoked_users:
            return
        self.values[token_digest] = (session, generation)

    async def revoke(self, token_digests: Sequence[str]) -> None:
        """Tombstone these token hashes."""
        self.revocations.append(("tokens", list(token_digests)))
        await self.gate()
        if not self.failing:
            self.tombstones.update(token_digests)

    async def revoke_users(self, user_ids: Sequence[str]) -> None:
        """Tombstone these users and every value of theirs."""
        self.revocations.append(("users", list(user_ids)))
        await self.gate()
        if not self.failing:
            self.revoked_users.update(user_ids)
            self.tombstones.update(d for d, (s, _) in self.values.items() if s.user_id in user_ids)

    async def bump_generation(self) -> bool:
        """Retire every value; ``False`` while failing."""
        await self.gate()
        if self.failing:
            return False
        self.generation += 1
        return True


class RecordingInvalidator:
    """An ``Invalidator`` that records what it was told, for tests of whoever calls one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # ("token" | "user" | "flush", the argument)

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        """Record a token's invalidation."""
        self.calls.append(("token", digest))
        return None

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """Record a user's invalidation."""
        self.calls.append(("user", user_id))
        return None

    async def flush(self) -> None:
        """Record a flush."""
        self.calls.append(("flush", ""))


def _conforms(source: MemorySource, shared: MemoryShared, invalidator: RecordingInvalidator) -> None:
    """Checked by mypy only: the memory implementations satisfy the ports."""
    _: tuple[SessionSource, SharedCache, Invalidator] = (source, shared, invalidator)
