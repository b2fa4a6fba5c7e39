"""The tiers: the in-process LRU, then Redis (optional), then Postgres, the source of truth.

- A Postgres hit fills Redis and the LRU; a Redis hit fills the LRU.
- Concurrent misses for one token share one lookup (single-flight), run as a task of its own so
  a client going away cannot cancel it for the others; misses for different tokens in the same
  loop tick share one ``MGET`` and one ``= ANY($1)`` query (``batching``).
- An unknown (or expired) token is remembered as absent for a short, separate TTL in a bounded
  LRU, so a repeated unknown (or raw, unsignable) token does not cost a query each time.
- Invalidation evicts by token hash or by user (both indexed). Revoked token hashes and users are
  remembered for a while, with the ``epoch`` (a count of invalidations) they were heard in: a
  lookup never fills a cache after an invalidation of its own token or user (or a flush) heard
  since it began, so a session read from Postgres just before its revocation cannot be cached
  past it; invalidations of *other* tokens (anyone may ``NOTIFY``) cost it nothing. A Redis value
  naming a remembered token or user is not trusted (the tombstone replacing it in Redis may still
  be on its way; and with Redis on, for as long as a value written before the revocation could be
  valid, so a copy written back by whoever can write to Redis is refused).
- That memory is bounded. When it has to drop an entry still in force (a flood of
  notifications), no Redis value is trusted until that entry would have lapsed: each lookup asks
  Postgres instead, so a flood can cost queries but never serve a revoked session.
- The shared tier hears of revocations in batches: those heard in one loop tick go out together,
  one batch at a time, so a flood of notifications is a few pipelines, not a job each.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.core.errors import BackendUnavailable
from gateway.core.lru import LRU
from gateway.credentials.tokens import token_hash
from gateway.lookup.batching import Batcher
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from gateway.core.sessions import Reason, Session
    from gateway.lookup.protocols import SessionSource, SharedCache


# How long a revoked token or user makes Redis values naming it untrusted: longer than the shared
# tier needs to write its tombstones. With Redis on, as long as a value's own lifetime (the L2
# TTL); with the cookie cache on, as long as a cookie's window (``resources`` passes the longest).
_REVOKED_FOR_S = 10.0
_REVOKED_MAX = 100_000
_REVOKE_CHUNK = 500  # revocations per request to the shared tier: well inside its time budget
_LONG_ID = 64  # a user id longer than this is remembered by its hash: anyone's NOTIFY can send 8,000 bytes


class Entry:
    """A cached valid session, with the hash of its token and a slot for its server.

    ``memo`` belongs to whoever answers requests from the cache (the HTTP adapter keeps its
    rendered response headers there): the core never reads it. It lives and dies with the
    entry, so nothing derived from a session outlives its eviction or revocation.
    """

    __slots__ = ("digest", "memo", "session")

    def __init__(self, session: Session, digest: str) -> None:
        self.session = session
        self.digest = digest
        self.memo: Any = None


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
        # "s:<digest>" and "u:<user id>": the epoch each was heard in, and until when it counts.
        self._revoked: LRU[tuple[int, float]] = LRU(_REVOKED_MAX, clock, on_evict=self._dropped)
        self._revoked_for_s = revoked_for_s
        self.epoch = 0  # invalidations heard (revocations and flushes)
        self._flushed = 0  # the epoch of the last flush
        self._lost = 0  # the newest epoch of a revocation the memory no longer holds
        self._forgot_until = 0.0  # an entry in force was dropped: trust no Redis value until then
        self._pending: tuple[list[str], list[str]] = ([], [])  # token hashes, users, for the shared tier
        self._revoking: asyncio.Task[None] | None = None

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
        return flight is not None and (flight[0] == self.epoch or not self._stale(flight[0], token_hash(token), None))

    async def load(self, token: str, digest: str | None = None) -> Loaded:
        """Fetch ``token`` from Redis, then Postgres, sharing one fetch among concurrent callers.

        ``digest``: the token's hash, when the caller has it already (``token_hash``).

        Raises:
            BackendUnavailable: Postgres could not answer and no shared tier had the session.
        """
        if digest is None:
            digest = token_hash(token)
        flight = self._inflight.get(token)
        # Never join a lookup begun before an invalidation of this token (its user is known after).
        if flight is not None and not self._stale(flight[0], digest, None):
            self.metrics.event("singleflight_join")
            session = await asyncio.shield(flight[1])
            if session is None or not self._stale(flight[0], digest, session.user_id):
                return Loaded(session, digest, flight[0])
            # Its user was revoked while it ran, maybe after this caller asked: ask again.
        epoch = self.epoch
        task = asyncio.ensure_future(self._load(token, digest, epoch))
        self._inflight[token] = (epoch, task)
        task.add_done_callback(lambda t: self._settle(token, t))
        return Loaded(await asyncio.shield(task), digest, epoch)

    async def _load(self, token: str, digest: str, epoch: int) -> Session | None:
        if self.shared is None:
            return await self._from_source(token)
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
        if session is not None and found is not None and not self._stale(epoch, digest, session.user_id):
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
        """Whether this token hash or user was heard revoked lately (``revoked_for_s``), or may have been."""
        if self._forgot_until:  # the memory dropped a revocation still in force: anything may be revoked
            if self._forgot_until > self.l1.clock():
                return True
            self._forgot_until = 0.0
        return self._revoked.get("s:" + digest) is not None or self._revoked.get(_user_name(user_id)) is not None

    def _stale(self, since: int, digest: str, user_id: str | None) -> bool:
        """Whether an invalidation heard since epoch ``since`` may concern this token hash or user."""
        if since == self.epoch:
            return False
        token = self._revoked.get("s:" + digest)
        user = None if user_id is None else self._revoked.get(_user_name(user_id))
        return (
            self._flushed > since
            or (token is not None and token[0] > since)
            or (user is not None and user[0] > since)
            or self._lost > since  # after the reads: an entry they found expired is dropped by them
        )

    def _note_revoked(self, name: str) -> None:
        deadline = self.l1.clock() + self._revoked_for_s
        self._revoked.put(name, (self.epoch, deadline), deadline)

    def _dropped(self, name: str, noted: tuple[int, float]) -> None:
        """The memory of revocations let go of ``name`` (the LRU's ``on_evict``)."""
        if name in self._revoked:
            return  # noted again, later
        epoch, deadline = noted
        self._lost = max(self._lost, epoch)
        if deadline > self.l1.clock():  # pushed out while in force (more revocations than it holds)
            self._forgot_until = max(self._forgot_until, deadline)

    def remember(self, key: str, loaded: Loaded) -> None:
        """Cache a valid session under a credential key, never past its ``expiresAt``.

        Skipped if its token or user was invalidated (or everything flushed) since the lookup
        began: what it read may be revoked.
        """
        session = loaded.session
        if session is None:
            return
        if loaded.epoch != self.epoch and self._stale(loaded.epoch, loaded.digest, session.user_id):
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
        return self._revoke_shared(0, digest)

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """Evict every session of a user everywhere (banned, deleted, changed)."""
        self._evict(_user_name(user_id), self._by_user.get(user_id, ()), "invalidation_user")
        return self._revoke_shared(1, user_id)

    def _revoke_shared(self, kind: int, name: str) -> Awaitable[object] | None:
        """Queue a revocation for the shared tier; the one task sending the queue ends once it is sent."""
        if self.shared is None:
            return None
        self._pending[kind].append(name)
        if self._revoking is None or self._revoking.done():
            # Its first step runs after the callbacks already scheduled: the rest of this tick's
            # notifications join the first batch.
            self._revoking = asyncio.ensure_future(self._send_revocations(self.shared))
        return self._revoking

    async def _send_revocations(self, shared: SharedCache) -> None:
        tokens, users = self._pending
        while tokens or users:
            if tokens:
                batch = tokens[:_REVOKE_CHUNK]
                del tokens[:_REVOKE_CHUNK]
                await shared.revoke(batch)
            if users:
                batch = users[:_REVOKE_CHUNK]
                del users[:_REVOKE_CHUNK]
                await shared.revoke_users(batch)

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
        self._flushed = self.epoch
        self.l1.clear()
        self._by_digest.clear()
        self._by_user.clear()


def _user_name(user_id: str) -> str:
    """A user's name in the memory of revocations: its id, or the id's hash when long (bounded memory)."""
    if len(user_id) <= _LONG_ID:
        return "u:" + user_id
    return "u:#" + hashlib.sha256(user_id.encode()).hexdigest()
