"""The tiers: the in-process LRU, then the shared cache (optional), then the source of truth.

- A source hit fills the shared cache and the LRU; a shared hit fills the LRU (fill-back).
- Concurrent misses for one token share one lookup (``flights``); misses for different tokens
  in the same loop tick share one bulk read of the shared cache and one of the source
  (``batching``).
- An unknown (or expired) token is remembered as absent for a short, separate TTL in a bounded
  LRU (never longer than a session would be cached), so a repeated unknown (or raw, unsignable)
  token does not cost a query each time.
- Invalidation evicts by token hash or by user (both indexed here), is remembered for a while
  (``revocations``: no lookup begun before it fills a cache with what it read, no shared value
  naming it is trusted) and is sent on to the shared cache in batches (``outbox``).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from gateway.core.lru import LRU
from gateway.credentials.tokens import token_hash
from gateway.lookup.batching import Batcher
from gateway.lookup.entries import Entry, Keys, index_add, index_discard, index_keys, sharing_user
from gateway.lookup.fetch import Fetcher, timed
from gateway.lookup.flights import Flights, Loaded
from gateway.lookup.outbox import Outbox
from gateway.lookup.revocations import MAX_ENTRIES, Revocations
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from gateway.core.sessions import Reason, Session
    from gateway.lookup.protocols import SessionSource, SharedCache

__all__ = ["Entry", "Loaded", "Tiers"]

# How long a revoked token or user makes shared values naming it untrusted: longer than the shared
# cache needs to write its tombstones. With Redis on, as long as a value's own lifetime (the L2
# TTL); with the cookie cache on, as long as a cookie's window (``resources`` passes the longest).
_REVOKED_FOR_S = 10.0


class Tiers:
    """Looks sessions up tier by tier, filling the faster tiers on the way back.

    Implements ``protocols.Invalidator`` for the invalidation listeners.
    """

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
        revoked_max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.l1: LRU[Entry] = LRU(max_entries, clock, on_evict=self.forget)
        self._l1_on = max_entries > 0  # off: ``remember`` has nothing to build
        self.negative: LRU[Reason] = LRU(negative_max_entries, clock)
        self.shared = shared
        self.revocations = Revocations(clock, revoked_for_s, revoked_max_entries)
        self._ttl_s = self._configured_ttl_s = ttl_s
        self._bounded = False  # the shared tier bypassed (``bound_staleness``)
        self._flushing = 0  # flushes waiting on the shared cache's bump: it is trusted for nothing meanwhile
        # A negative entry must not outlive a positive one (a session created meanwhile).
        self._negative_ttl_s = min(negative_ttl_s, ttl_s)
        histogram = self.metrics.backend_seconds.labels("postgres")
        batches: Batcher[str, Session] = Batcher(timed(source.fetch_many, histogram.observe), batch_max_size)
        self._fetch = Fetcher(
            source=batches,
            shared=shared,
            revocations=self.revocations,
            metrics=self.metrics,
            skipped=self._skip_shared,
            flushing=self._flushing_now,
        )
        self._flights = Flights(self.revocations)
        self._joined = functools.partial(self.metrics.event, "singleflight_join")
        self._outbox = Outbox(shared) if shared is not None else None
        self._by_digest: dict[str, Keys] = {}
        self._by_user: dict[str, Keys] = {}
        # Hears the (key, digest) of the entries a revocation just evicted (``Decider.recheck``).
        self.on_revoked: Callable[[list[tuple[str, str]]], None] | None = None

    @property
    def invalidations(self) -> int:
        """How many invalidations this process has heard (``Revocations``; not the shared generation)."""
        return self.revocations.invalidations

    @property
    def epoch(self) -> int:
        """The old name of ``invalidations`` (kept while call sites move)."""
        return self.revocations.invalidations

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

    def joinable(self, token: str) -> bool:
        """Whether a ``load`` of ``token`` now would join a lookup in flight (costing nothing more)."""
        return self._flights.joinable(token, token_hash(token))

    async def load(self, token: str, digest: str | None = None) -> Loaded:
        """Fetch ``token`` from the shared cache, then the source, sharing one fetch among concurrent callers.

        ``digest``: the token's hash, when the caller has it already (``token_hash``).

        Raises:
            BackendUnavailable: the source could not answer and the shared cache had no session.
        """
        hashed = token_hash(token) if digest is None else digest
        return await self._flights.run(token, hashed, lambda since: self._fetch(token, hashed, since), self._joined)

    def _skip_shared(self) -> bool:
        return self._bounded or bool(self._flushing)

    def _flushing_now(self) -> bool:
        return bool(self._flushing)

    def bound_staleness(self, bound_s: float | None) -> None:
        """Cap how long a session is cached unchecked at ``bound_s`` (``None``: as configured).

        For when nothing tells of revocations (no triggers): then the LRU's TTL is all that bounds
        them, and the shared tier is bypassed (neither read nor filled: its values live longer).
        Entries cached before keep their deadline: callers flush when lifting or setting a bound.
        """
        self._bounded = bound_s is not None
        self._ttl_s = self._configured_ttl_s if bound_s is None else min(self._configured_ttl_s, bound_s)

    def revoked_lately(self, digest: str, user_id: str) -> bool:
        """Whether this token hash or user was heard revoked lately (``revoked_for_s``), or may have been."""
        return self.revocations.lately(digest, user_id)

    def remember(self, key: str, loaded: Loaded) -> None:
        """Cache a valid session under a credential key, never past its ``expiresAt``.

        Skipped if its token or user was invalidated (or everything flushed) since the lookup
        began: what it read may be revoked.
        """
        session = loaded.session
        if not self._l1_on or session is None:  # off: nothing to build an entry for
            return
        if self.revocations.stale(loaded.invalidations, loaded.digest, session.user_id):
            return
        deadline = min(self.l1.clock() + self._ttl_s, session.expires_at)
        user_id = session.user_id
        others = index_keys(self._by_user, user_id)
        session = sharing_user(session, self.l1.peek(others[0]) if others else None)
        self.l1.put(key, Entry(session, loaded.digest), deadline)
        if key in self.l1:  # not dropped (a zero-sized LRU, a deadline already past)
            index_add(self._by_digest, loaded.digest, key)
            index_add(self._by_user, user_id, key)

    def remember_absent(self, key: str, reason: Reason) -> None:
        """Remember that a credential key named no valid session (and why), for the short negative TTL."""
        self.negative.put(key, reason, self.l1.clock() + self._negative_ttl_s)

    def forget(self, key: str, entry: Entry) -> None:
        """Drop an entry leaving the LRU from the indexes (the LRU's ``on_evict``)."""
        index_discard(self._by_digest, entry.digest, key)
        index_discard(self._by_user, entry.session.user_id, key)

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        """Evict a revoked session everywhere; return the shared cache's work, to await or not."""
        self.revocations.token(digest)
        self._evict(index_keys(self._by_digest, digest), "invalidation_session")
        return None if self._outbox is None else self._outbox.token(digest)

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """Evict every session of a user everywhere (banned, deleted, changed)."""
        self.revocations.user(user_id)
        self._evict(index_keys(self._by_user, user_id), "invalidation_user")
        return None if self._outbox is None else self._outbox.user(user_id)

    def _evict(self, keys: Iterable[str], event: str) -> None:
        self.metrics.event(event)
        evicted = []
        for key in keys:
            entry = self.l1.pop(key)
            if entry is not None:
                evicted.append((key, entry.digest))
            self.metrics.event("eviction")
        if evicted and self.on_revoked is not None:  # after the eviction: nothing serves them meanwhile
            self.on_revoked(evicted)

    async def flush(self) -> None:
        """Forget everything cached: notifications may have been missed."""
        self.metrics.event("invalidation_flush")
        self._clear()
        if self.shared is not None:
            # Until the bump lands, the shared cache still holds what the missed notifications were
            # about: no lookup trusts it meanwhile (red team of issue 17, C).
            self._flushing += 1
            try:
                await self.shared.bump_generation()
            finally:
                self._flushing -= 1
            self._clear()  # what was read from the shared cache while the bump was on its way

    def _clear(self) -> None:
        self.revocations.flush()
        self.l1.clear()
        self._by_digest.clear()
        self._by_user.clear()
