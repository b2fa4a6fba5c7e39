"""The tiers: the in-process LRU, then Redis (optional), then Postgres, the source of truth.

- A Postgres hit fills Redis and the LRU; a Redis hit fills the LRU.
- Concurrent misses for one token share one lookup (single-flight), run as a task of its own so
  a client going away cannot cancel it for the others; misses for different tokens in the same
  loop tick share one ``MGET`` and one ``= ANY($1)`` query (``batching``).
- An unknown (or expired) token is remembered as absent for a short, separate TTL in a bounded
  LRU, so a repeated unknown (or raw, unsignable) token does not cost a query each time.
- Invalidation evicts by token hash or by user (both indexed) and bumps ``epoch``: a lookup that
  started before an invalidation never fills a cache after it, so a session read from Postgres
  just before its revocation cannot be cached past it. Revoked token hashes and users are also
  remembered for a while, and a Redis value naming one is not trusted (the tombstone replacing it
  in Redis may still be on its way; and with Redis on, for as long as a value written before the
  revocation could be valid, so a copy written back by whoever can write to Redis is refused).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.batching import Batcher
from gateway.errors import BackendUnavailable
from gateway.lru import LRU
from gateway.metrics import Metrics
from gateway.redis_tier import token_hash

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from gateway.redis_tier import Lookup
    from gateway.sessions import Reason, Session


# How long a revoked token or user makes Redis values naming it untrusted: longer than the shared
# tier needs to write its tombstones. With Redis on, as long as a value's own lifetime (the L2
# TTL); with the cookie cache on, as long as a cookie's window (``resources`` passes the longest).
_REVOKED_FOR_S = 10.0
_REVOKED_MAX = 100_000


class SessionSource(Protocol):
    """The source of truth (``store.Store``)."""

    def fetch_many(self, tokens: Sequence[str]) -> Awaitable[Mapping[str, Session]]:
        """Sessions by token; raise ``BackendUnavailable`` when the source can't answer."""
        ...


class SharedCache(Protocol):
    """A cache shared between processes (``redis_tier.RedisTier``), keyed by token hash."""

    def get(self, token_digest: str) -> Awaitable[Lookup | None]:
        """The cached session and the generation read, or ``None`` when unavailable; never raises."""
        ...

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Cache ``session`` (maybe in the background); never raises."""
        ...

    def revoke(self, token_digests: Sequence[str]) -> Awaitable[object]:
        """Make these sessions unservable from the shared cache; never raises."""
        ...

    def revoke_user(self, user_id: str) -> Awaitable[object]:
        """Make every session of a user unservable from the shared cache; never raises."""
        ...

    def bump_generation(self) -> Awaitable[bool]:
        """Make everything cached so far unusable; never raises."""
        ...


class Entry:
    """A cached valid session; ``rendered`` is a memo for the HTTP adapter's response headers."""

    __slots__ = ("digest", "rendered", "session")

    def __init__(self, session: Session, digest: str) -> None:
        self.session = session
        self.digest = digest
        self.rendered: list[tuple[str, str]] | None = None


class Loaded(NamedTuple):
    """A lookup's result, with what filling the caches afterwards needs."""

    session: Session | None
    digest: str  # sha256 of the token
    epoch: int  # the invalidation epoch the lookup started in


class Tiers:
    """Looks sessions up tier by tier, filling the faster tiers on the way back."""

    def __init__(  # noqa: PLR0913  (each tier and its bounds, explicitly)
        self,
        source: SessionSource,
        shared: SharedCache | None,
        *,
        max_entries: int,
        ttl_s: float,
        negative_max_entries: int,
        negative_ttl_s: float,
        batch_max_size: int = 256,
        revoked_for_s: float = _REVOKED_FOR_S,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.l1: LRU[Entry] = LRU(max_entries, clock, on_evict=self.forget)
        self.negative: LRU[Reason] = LRU(negative_max_entries, clock)
        self.shared = shared
        self._ttl_s = ttl_s
        # A negative entry must not outlive a positive one (a session created meanwhile).
        self._negative_ttl_s = min(negative_ttl_s, ttl_s)
        self._source: Batcher[str, Session] = Batcher(self._timed(source.fetch_many), batch_max_size)
        self._inflight: dict[str, tuple[int, asyncio.Task[Session | None]]] = {}
        self._by_digest: dict[str, set[str]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._revoked: LRU[bool] = LRU(_REVOKED_MAX, clock)  # "s:<digest>" and "u:<user id>"
        self._revoked_for_s = revoked_for_s
        self.epoch = 0

    def cached(self, key: str) -> Entry | None:
        """The hit path: the live LRU entry for a credential key, with no I/O."""
        entry = self.l1.get(key)
        self.metrics.lookup("l1", "miss" if entry is None else "hit")
        return entry

    def respelled(self, key: str) -> Entry | None:
        """A respelled credential's hit: the LRU entry of its home key (``tokens.Proof``), no I/O."""
        entry = self.l1.get(key)
        if entry is not None:
            self.metrics.event("respelled_hit")
        return entry

    def known_absent(self, key: str) -> Reason | None:
        """Why a credential key was recently looked up and found no valid session, if it was."""
        reason = self.negative.get(key)
        if reason is not None:
            self.metrics.lookup("l1", "negative")
        return reason

    def _timed(
        self, bulk: Callable[[Sequence[str]], Awaitable[Mapping[str, Session]]]
    ) -> Callable[[Sequence[str]], Awaitable[Mapping[str, Session]]]:
        histogram = self.metrics.backend_seconds.labels("postgres")

        async def timed(tokens: Sequence[str]) -> Mapping[str, Session]:
            started = time.perf_counter()
            try:
                return await bulk(tokens)
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed

    def joinable(self, token: str) -> bool:
        """Whether a ``load`` of ``token`` now would join a lookup in flight (costing nothing more)."""
        flight = self._inflight.get(token)
        return flight is not None and flight[0] == self.epoch

    async def load(self, token: str) -> Loaded:
        """Fetch ``token`` from Redis, then Postgres, sharing one fetch among concurrent callers.

        Raises:
            BackendUnavailable: Postgres could not answer and no shared tier had the session.
        """
        epoch = self.epoch
        flight = self._inflight.get(token)
        if flight is None or flight[0] != epoch:  # never join a lookup begun before an invalidation
            task = asyncio.ensure_future(self._load(token, epoch))
            self._inflight[token] = flight = (epoch, task)
            task.add_done_callback(lambda t: self._settle(token, t))
        else:
            self.metrics.event("singleflight_join")
        session = await asyncio.shield(flight[1])
        return Loaded(session, token_hash(token), flight[0])

    async def _load(self, token: str, epoch: int) -> Session | None:
        if self.shared is None:
            return await self._from_source(token)
        digest = token_hash(token)
        found = await self.shared.get(digest)
        if found is None:
            self.metrics.lookup("redis", "error")
        elif found.session is not None and not self.revoked_lately(digest, found.session.user_id):
            self.metrics.lookup("redis", "hit")
            return found.session
        else:
            self.metrics.lookup("redis", "miss")
        session = await self._from_source(token)
        # Not after an invalidation heard since the lookup began: what Postgres said may be stale
        # (the shared tier also refuses writes over a token's or user's tombstone).
        if session is not None and found is not None and epoch == self.epoch:
            self.shared.put(digest, session, found.generation)
        return session

    async def _from_source(self, token: str) -> Session | None:
        try:
            session = await self._source.get(token)
        except BackendUnavailable:
            self.metrics.lookup("postgres", "error")
            raise
        self.metrics.lookup("postgres", "miss" if session is None else "hit")
        return session

    def _settle(self, token: str, task: asyncio.Task[Session | None]) -> None:
        flight = self._inflight.get(token)
        if flight is not None and flight[1] is task:
            del self._inflight[token]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away

    def revoked_lately(self, digest: str, user_id: str) -> bool:
        """Whether this token hash or user was heard revoked lately (``revoked_for_s``)."""
        return self._revoked.get("s:" + digest) is not None or self._revoked.get("u:" + user_id) is not None

    def _note_revoked(self, name: str) -> None:
        self._revoked.put(name, True, self.l1.clock() + self._revoked_for_s)  # noqa: FBT003

    def remember(self, key: str, loaded: Loaded) -> None:
        """Cache a valid session under a credential key, never past its ``expiresAt``.

        Skipped if an invalidation happened since the lookup began: what it read may be revoked.
        """
        session = loaded.session
        if session is None or loaded.epoch != self.epoch:
            return
        deadline = min(self.l1.clock() + self._ttl_s, session.expires_at)
        self.l1.put(key, Entry(session, loaded.digest), deadline)
        if key in self.l1:
            self._by_digest.setdefault(loaded.digest, set()).add(key)
            self._by_user.setdefault(session.user_id, set()).add(key)

    def remember_absent(self, key: str, reason: Reason) -> None:
        """Remember that a credential key named no valid session (and why), for the short negative TTL."""
        self.negative.put(key, reason, self.l1.clock() + self._negative_ttl_s)

    def forget(self, key: str, entry: Entry) -> None:
        """Drop an entry leaving the LRU from the indexes (the LRU's ``on_evict``)."""
        for index, name in ((self._by_digest, entry.digest), (self._by_user, entry.session.user_id)):
            keys = index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[name]

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        """Evict a revoked session everywhere; return the shared tier's work, to await or not."""
        self._evict("s:" + digest, self._by_digest.get(digest, ()), "invalidation_session")
        return None if self.shared is None else self.shared.revoke([digest])

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """Evict every session of a user everywhere (banned, deleted, changed)."""
        self._evict("u:" + user_id, self._by_user.get(user_id, ()), "invalidation_user")
        return None if self.shared is None else self.shared.revoke_user(user_id)

    def _evict(self, revoked: str, keys: Iterable[str], event: str) -> None:
        self.epoch += 1
        self._note_revoked(revoked)
        self.metrics.event(event)
        for key in list(keys):
            self.l1.pop(key)
            self.metrics.event("eviction")

    async def flush(self) -> None:
        """Forget everything cached: notifications may have been missed."""
        self.metrics.event("invalidation_flush")
        self._clear()
        if self.shared is not None:
            await self.shared.bump_generation()
            self._clear()  # what was read from Redis while the bump was on its way

    def _clear(self) -> None:
        self.epoch += 1
        self.l1.clear()
        self._by_digest.clear()
        self._by_user.clear()
