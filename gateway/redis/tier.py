"""The shared tier: sessions in Redis, for every worker and every instance.

- Keys are ``<prefix>:v2:s:<sha256(token)>``: a dump of Redis reveals no usable token. Values are
  signed and dated (``values``).
- Revocation: a revoked session's key gets a short-lived tombstone, and writes never replace a
  tombstone, so a lookup that read Postgres just before the revocation cannot put the session
  back. ``<prefix>:v2:u:{<sha256(user id)>}`` lists a user's cached sessions, for user events; a
  revoked user gets a tombstone of its own (``<prefix>:v2:r:{…}``, same hash slot), and a write
  is only made after its session was added to the user's list, atomically unless the user is
  tombstoned: a lookup that read a user just before a role change cannot put the old one back
  (``scripts``).
- ``<prefix>:v2:gen`` is a generation number, read with every ``MGET``: a value from another
  generation is a miss. Bumping it makes everything cached before unusable at once; a process
  never lets it go back (``generation``).
- Reads made in the same loop tick go out as one ``MGET`` on a pipelined connection of their own
  (``reads``, ``pipe``): the redis-py client, not Redis, is the cost of a round trip. Writes
  (misses only) go through redis-py as one pipeline per tick; ``drain()`` awaits those queued so far.
- Redis failing never fails a request: the tier turns into misses, stops trying (``degraded``)
  and a background probe, backing off with jitter, brings it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random as _random
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from gateway.core.backoff import Backoff, jitter
from gateway.core.errors import CacheUnavailable
from gateway.lookup.protocols import SharedRead as Lookup
from gateway.redis import client as redis_client
from gateway.redis.generation import Generation
from gateway.redis.reads import ClusterReads, PipelinedReads
from gateway.redis.scripts import INDEX_UNLESS_REVOKED, REVOKE_USER, SET_UNLESS_REVOKED, TOMBSTONE
from gateway.redis.values import Values, mac_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from redis.asyncio import Redis

    from gateway.config import Settings
    from gateway.core.sessions import Session

log = logging.getLogger("gateway.redis")

_MAX_BACKOFF_S = 30.0
_T = TypeVar("_T")


def tombstone_s(settings: Settings) -> float:
    """How long a tombstone lasts: longer than any lookup can take between reading Postgres and writing here."""
    return max(settings.redis_tombstone_s, 2 * (settings.db_timeout_s + settings.redis_timeout_s))


class RedisTier:
    """Signed, batched session values in Redis (a ``SharedCache``); every failure is a miss, never an error.

    ``configuration`` is what the values' MAC binds besides the secret (``values.mac_key``).
    ``observe`` gets the time of each ``MGET`` and ``event`` counts a value not cached, for the
    metrics; ``random`` is the back-off's jitter (``random.random`` unless a test injects its own).
    """

    def __init__(  # noqa: PLR0913  (the parts the composition root hands over)
        self,
        client: Redis | RedisCluster,
        settings: Settings,
        configuration: bytes,
        clock: Callable[[], float],
        *,
        observe: Callable[[float], None] | None = None,
        event: Callable[[str], None] | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._client = client
        self._observe = observe or (lambda _: None)
        self._event = event or (lambda _: None)
        self._prefix = prefix = f"{settings.redis_prefix}:v2:"
        self._session_prefix = prefix + "s:"
        self.generation = Generation(client, prefix + "gen")
        self._values = Values(mac_key(settings.secret.reveal(), configuration))
        self._ttl_s = settings.l2_ttl_s
        self._timeout_s = settings.redis_timeout_s
        self._backoff = Backoff(settings.redis_backoff_s, _MAX_BACKOFF_S, jitter(random))
        self._tombstone_ms = int(tombstone_s(settings) * 1000)
        self._clock = clock
        self._repair: asyncio.Task[bool] | None = None
        parts: dict[str, Any] = {"timeout_s": self._timeout_s, "max_size": settings.batch_max_size}
        parts |= {"decode": self._decode, "failed": self._degrade, "observe": self._observe}
        self._reads = (
            ClusterReads(client, self.generation.key, **parts)
            if isinstance(client, RedisCluster)
            else PipelinedReads(client, self.generation.key, **parts)
        )
        self._writes: list[tuple[str, bytes, int, str]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.degraded: str | None = None  # why Redis is being skipped, while it is
        self._probe: asyncio.Task[None] | None = None

    def key(self, token_digest: str) -> str:
        """The Redis key of a session, from its token's hash."""
        return self._session_prefix + token_digest

    def _user_keys(self, user_id: str) -> list[str]:
        """The user's list of cached sessions and the user's tombstone: one hash slot (``{…}``)."""
        tag = "{" + hashlib.sha256(user_id.encode()).hexdigest() + "}"
        return [self._prefix + "u:" + tag, self._prefix + "r:" + tag]

    def get(self, token_digest: str) -> asyncio.Future[Lookup | None]:
        """The session cached under a token hash, with the generation read; ``None`` if Redis is down."""
        if self.degraded is not None:
            skipped: asyncio.Future[Lookup | None] = asyncio.get_running_loop().create_future()
            skipped.set_result(None)
            return skipped
        return self._reads.get(self._session_prefix + token_digest)

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Cache ``session`` (in the background) until the L2 TTL or its ``expiresAt``, whichever is first.

        ``generation`` is the one read before the session was looked up in Postgres, so a bump in
        between leaves the value unusable. ``drain()`` awaits the write.
        """
        now = self._clock()
        not_after = min(now + self._ttl_s, session.expires_at)
        ttl_ms = int((not_after - now) * 1000)
        if self.degraded is not None or ttl_ms <= 0:
            return
        key = self.key(token_digest)
        value = self._values.seal(key, session, generation, not_after)
        if value is None:
            self._event("redis_uncacheable")
            return
        if not self._writes:
            asyncio.get_running_loop().call_soon(self._flush_writes)
        self._writes.append((key, value, ttl_ms, session.user_id))

    async def drain(self) -> None:
        """Return once every write queued so far was sent to Redis, or failed (never raises).

        Writes queued while it waits are not waited for. For tests, instead of sleeping.
        """
        self._flush_writes()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def revoke(self, token_digests: Sequence[str]) -> None:
        """Replace the sessions of these token hashes with tombstones (a best effort: never raises)."""
        await self._guarded(self._tombstone(list(token_digests)))

    async def revoke_users(self, user_ids: Sequence[str]) -> None:
        """Tombstone these users and every cached session of theirs (a best effort: never raises)."""

        async def run() -> None:
            ttl = self._tombstone_ms
            listed = await self._reads.execute(
                [("EVAL", REVOKE_USER, 2, *self._user_keys(user_id), ttl, TOMBSTONE) for user_id in user_ids]
            )
            await self._tombstone([m.decode() if isinstance(m, bytes) else m for members in listed for m in members])

        await self._guarded(run())

    async def bump_generation(self) -> bool:
        """Make every value cached so far unusable; ``False`` if Redis could not be told (never raises)."""
        return await self._guarded(self.generation.bump())

    async def ping(self) -> None:
        """Return once Redis answers ``PING``.

        Raises:
            CacheUnavailable: Redis did not answer within the budget (the cause chained).
        """
        async with redis_client.answering(self._timeout_s, CacheUnavailable):
            await self._reads.ping()

    async def close(self) -> None:
        """Stop the background work (queued writes are dropped) and close the connections."""
        for task in (*self._background, *([self._probe] if self._probe else [])):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._reads.close()
        await redis_client.close(self._client)

    def _repair_generation(self) -> None:
        if self._repair is None or self._repair.done():
            self._repair = self._in_background(self._guarded(self.generation.repair()))

    async def _tombstone(self, digests: list[str]) -> None:
        if digests:
            ttl = self._tombstone_ms
            await self._reads.execute([("SET", self.key(digest), TOMBSTONE, "PX", ttl) for digest in digests])

    async def _guarded(self, work: Awaitable[Any]) -> bool:
        """Run ``work`` within the budget; ``False`` (and degrade) if Redis failed it."""
        try:
            async with redis_client.answering(self._timeout_s, CacheUnavailable):
                await work
        except CacheUnavailable as exc:
            self._degrade(exc)
            return False
        return True

    def _in_background(self, work: Awaitable[_T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _decode(self, keys: Sequence[str], raw: list[Any]) -> list[Lookup] | None:
        """What an ``MGET`` of the generation and ``keys`` read; ``None`` if the generation is not to be trusted."""
        generation = self.generation.read(raw[0])
        if generation is None:
            # Rolled back, or garbage: trust nothing read with it (the callers count these as
            # errors and ask Postgres), and set it back in the background. An MGET that raced
            # one of our own bumps lands here too; the repair then finds nothing to do.
            self._repair_generation()
            return None
        now, open_ = self._clock(), self._values.open
        pairs = zip(keys, raw[1:], strict=True)
        return [Lookup(open_(key, value, generation, now), generation) for key, value in pairs]

    def _flush_writes(self) -> None:
        writes, self._writes = self._writes, []
        if writes:
            self._in_background(self._guarded(self._write(writes)))

    async def _write(self, writes: list[tuple[str, bytes, int, str]]) -> None:
        # Two steps, in this order (a user's list and a session live in different hash slots):
        # list each session under its user unless the user is tombstoned, then write the ones listed.
        head, list_ttl_ms = len(self._session_prefix), int(self._ttl_s * 1000)
        listed = await self._reads.execute(
            [("EVAL", INDEX_UNLESS_REVOKED, 2, *self._user_keys(u), key[head:], list_ttl_ms) for key, _, _, u in writes]
        )
        await self._reads.execute(
            [
                ("EVAL", SET_UNLESS_REVOKED, 1, key, value, ttl_ms, TOMBSTONE)
                for (key, value, ttl_ms, _), ok in zip(writes, listed, strict=True)
                if ok
            ]
        )

    def _degrade(self, exc: CacheUnavailable) -> None:
        """Stop using Redis and start probing it in the background until it answers again."""
        if self.degraded is None:
            self.degraded = str(exc)
            log.warning("Redis unavailable, serving from memory and Postgres: %s", self.degraded)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Probe until Redis answers (jittered, capped exponential back-off), then bump the generation."""
        self._backoff.reset()
        while True:
            await self._backoff.wait()
            try:
                await self.ping()
                # Revocations made while Redis was unreachable never reached it.
                async with redis_client.answering(self._timeout_s, CacheUnavailable):
                    await self.generation.bump()
            except CacheUnavailable:
                continue
            log.info("Redis is back")
            self.degraded = None
            return
