"""The tiers: the in-process LRU, then Redis (optional), then Postgres, the source of truth.

- A Postgres hit fills Redis and the LRU; a Redis hit fills the LRU.
- Concurrent misses for one token share one lookup (single-flight), run as a task of its own so
  a client going away cannot cancel it for the others; misses for different tokens in the same
  loop tick share one ``MGET`` and one ``= ANY($1)`` query (``batching``).
- An unknown token is remembered as absent for a short, separate TTL in a bounded LRU, so a
  repeated unknown (or raw, unsignable) token does not cost a query each time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from gateway.batching import Batcher
from gateway.redis_tier import token_hash

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from gateway.lru import LRU
    from gateway.sessions import Session


class SessionSource(Protocol):
    """The source of truth (``store.Store``)."""

    def fetch_many(self, tokens: Sequence[str]) -> Awaitable[Mapping[str, Session]]:
        """Sessions by token; raise ``BackendUnavailable`` when the source can't answer."""
        ...


class SharedCache(Protocol):
    """A cache shared between processes (``redis_tier.RedisTier``), keyed by token hash."""

    def get(self, token_digest: str) -> Awaitable[Session | None]:
        """The cached session, or ``None``; never raises."""
        ...

    def put(self, token_digest: str, session: Session) -> None:
        """Cache ``session`` (it may be written in the background); never raises."""
        ...


class Entry:
    """A cached valid session; ``rendered`` is a memo for the HTTP adapter's response headers."""

    __slots__ = ("rendered", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rendered: list[tuple[str, str]] | None = None


class Tiers:
    """Looks sessions up tier by tier, filling the faster tiers on the way back."""

    def __init__(  # noqa: PLR0913  (each tier and its TTL, explicitly)
        self,
        l1: LRU[Entry],
        negative: LRU[bool],
        source: SessionSource,
        shared: SharedCache | None,
        *,
        ttl_s: float,
        negative_ttl_s: float,
        batch_max_size: int = 256,
    ) -> None:
        self.l1 = l1
        self.negative = negative
        self.shared = shared
        self._ttl_s = ttl_s
        # A negative entry must not outlive a positive one (a session created meanwhile).
        self._negative_ttl_s = min(negative_ttl_s, ttl_s)
        self._source: Batcher[str, Session] = Batcher(source.fetch_many, batch_max_size)
        self._inflight: dict[str, asyncio.Task[Session | None]] = {}

    def cached(self, key: str) -> Entry | None:
        """The hit path: the live LRU entry for a credential key, with no I/O."""
        return self.l1.get(key)

    def known_absent(self, key: str) -> bool:
        """Whether a credential key was recently looked up and found to be no session."""
        return self.negative.get(key) is not None

    async def load(self, token: str) -> Session | None:
        """Fetch ``token`` from Redis, then Postgres, sharing one fetch among concurrent callers.

        Raises:
            BackendUnavailable: Postgres could not answer and no shared tier had the session.
        """
        task = self._inflight.get(token)
        if task is None:
            task = asyncio.ensure_future(self._load(token))
            self._inflight[token] = task
            task.add_done_callback(lambda t: self._settle(token, t))
        return await asyncio.shield(task)

    async def _load(self, token: str) -> Session | None:
        digest = token_hash(token) if self.shared is not None else ""
        if self.shared is not None:
            session = await self.shared.get(digest)
            if session is not None:
                return session
        session = await self._source.get(token)
        if session is not None and self.shared is not None:
            self.shared.put(digest, session)
        return session

    def _settle(self, token: str, task: asyncio.Task[Session | None]) -> None:
        if self._inflight.get(token) is task:
            del self._inflight[token]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away

    def remember(self, key: str, session: Session) -> None:
        """Cache a valid session under a credential key, never past its ``expiresAt``."""
        deadline = min(self.l1.clock() + self._ttl_s, session.expires_at)
        self.l1.put(key, Entry(session), deadline)

    def remember_absent(self, key: str) -> None:
        """Remember that a credential key named no session, for the short negative TTL."""
        self.negative.put(key, True, self.l1.clock() + self._negative_ttl_s)  # noqa: FBT003
