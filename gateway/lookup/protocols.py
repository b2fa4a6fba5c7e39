"""The core's ports: what the lookup needs from its adapters, as protocols.

The adapters (``gateway.postgres``, ``gateway.redis``) implement them; the core never imports an
adapter. ``tests/support/memory.py`` has in-memory implementations for the core's unit tests.

The shared cache keeps a *generation*: a number every process using it reads with each value
and writes with each value, bumped (``bump_generation``) whenever revocations may have been
missed, so that everything cached before is a miss for everyone. It is not the local count of
invalidations a process has heard (``lookup.revocations.Revocations.invalidations``), which
dates a lookup in that one process.

Four values carry a session, each with its own bookkeeping: ``SharedRead`` (what the shared
cache held, and the generation read), ``flights.Loaded`` (what a lookup found, dated by the local
invalidation count), ``tiers.Entry`` (what the in-process LRU holds) and ``sessions.Verdict``
(what a decision says).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from gateway.core.sessions import Session


class SharedRead(NamedTuple):
    """What a read of the shared cache found: the session (if any usable one) and the generation read.

    ``generation`` is passed back to ``SharedCache.put`` when the session is then read from the
    source, so that a bump in between leaves the value written unusable.
    """

    session: Session | None
    generation: int


class SessionSource(Protocol):
    """The source of truth: Postgres (``postgres.store``) or Better Auth's secondary storage."""

    def fetch_many(self, tokens: Sequence[str]) -> Awaitable[Mapping[str, Session]]:
        """Sessions by token; raise ``StoreUnavailable`` (a ``BackendUnavailable``) when the source can't answer."""
        ...


class SharedCache(Protocol):
    """A cache shared between processes (``redis.tier.RedisTier``), keyed by token hash."""

    def get(self, token_digest: str) -> Awaitable[SharedRead | None]:
        """The cached session and the generation read, or ``None`` when unavailable; never raises."""
        ...

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Cache ``session`` under ``generation`` (maybe in the background); never raises.

        A put never replaces a revocation (``revoke``, ``revoke_users``) still in force.
        """
        ...

    def revoke(self, token_digests: Sequence[str]) -> Awaitable[object]:
        """Make these sessions unservable from the shared cache; never raises."""
        ...

    def revoke_users(self, user_ids: Sequence[str]) -> Awaitable[object]:
        """Make every session of these users unservable from the shared cache; never raises."""
        ...

    def bump_generation(self) -> Awaitable[bool]:
        """Make everything cached so far unusable, for every process; ``False`` if it could not; never raises."""
        ...


class Invalidator(Protocol):
    """What the invalidation listeners (Postgres ``LISTEN``, Redis keyspace events) tell the caches.

    ``lookup.tiers.Tiers`` implements it. Each call evicts at once in this process; the returned
    awaitable (if any) is the shared tier's part of the work, to await or not.
    """

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        """A session ended: its token's sha256 hex digest."""
        ...

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """Every session of a user ended or changed (banned, deleted, updated)."""
        ...

    def flush(self) -> Awaitable[None]:
        """Notifications may have been missed: forget everything cached."""
        ...


class Listener(Protocol):
    """An invalidation listener (Postgres ``LISTEN``, Redis keyspace events): one shape for both.

    It feeds an ``Invalidator`` in the background from ``start`` until ``close``, reconnecting by
    itself; ``connected`` says whether it hears notifications now (``/readyz`` reports it).
    """

    @property
    def connected(self) -> bool:
        """Whether notifications are heard now (while not, revocations wait for the caches' TTLs)."""
        ...

    def start(self) -> None:
        """Start listening in the background."""
        ...

    def close(self) -> Awaitable[None]:
        """Stop listening and release the connection."""
        ...
