"""The shared tier: sessions in Redis, for every worker and every instance.

- Keys are ``<prefix>:v2:s:<sha256(token)>``: a dump of Redis reveals no usable token.
- Values are ``MAC || generation || not-after || msgpack(Session)``, the MAC an HMAC-SHA256
  (keyed from the secret) over key and value: whoever can write to Redis still cannot mint a
  session. A bad MAC is a miss. The not-after time (the write's time plus the L2 TTL, never past
  ``expiresAt``) is checked on every read, so a value copied out of Redis and written back later
  is a miss once its own TTL would have ended it.
- Revocation: a revoked session's key gets a short-lived tombstone, and writes never replace a
  tombstone, so a lookup that read Postgres just before the revocation cannot put the session
  back. ``<prefix>:v2:u:{<sha256(user id)>}`` lists a user's cached sessions, for user events; a
  revoked user gets a tombstone of its own (``<prefix>:v2:r:{…}``, same hash slot), and a write
  is only made after its session was added to the user's list, atomically unless the user is
  tombstoned: a lookup that read a user just before a role change cannot put the old one back.
- ``<prefix>:v2:gen`` is a generation number, read with every ``MGET``: a value from another
  generation is a miss. It is bumped whenever revocations may have been missed (a listener
  reconnected, Redis came back), which makes everything cached before unusable at once. It is
  not signed (``INCR`` must stay atomic), so a process never goes back: a generation lower than
  the highest it has seen, or one that is not a number, makes that read a miss and is set back
  (a flushed Redis recovers this way; a rolled-back one cannot revive what a bump retired). A
  bump is at least Redis's clock in milliseconds, so a process that has seen nothing yet (just
  started) still bumps past every generation a value written before it could carry (unless the
  counter was pushed ahead of the clock by someone who can write to Redis: ``SECURITY.md``).
- Reads made in the same loop tick go out as one ``MGET``, writes as one pipeline: the redis-py
  client, not Redis, is the cost of a round trip.
- Redis failing never fails a request: the tier turns into misses, stops trying for a back-off
  (``degraded``) and a background probe brings it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.core.sessions import Session
from gateway.lookup.batching import Batcher
from gateway.lookup.protocols import SharedRead as Lookup
from gateway.postgres.schema import mapping_from

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from gateway.config import Settings

log = logging.getLogger("gateway.redis")

_MAC_BYTES = 16  # 128-bit tag
_HEAD = struct.Struct(">Qd")  # the generation, and the not-after time (Unix seconds)
_HEAD_END = _MAC_BYTES + _HEAD.size
_MAX_GEN_DIGITS = 15  # below 2**53: exact in Lua's numbers too
TOMBSTONE = b"revoked"
# Write a session unless the key holds a tombstone (a revocation raced the lookup that read it).
_SET_UNLESS_REVOKED = """
if redis.call('GET', KEYS[1]) == ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# List a session under its user unless the user was revoked meanwhile (KEYS: the list, the user's
# tombstone). The session itself is written only after this says yes, so a revocation either
# finds it in the list (and tombstones it) or the write is refused.
_INDEX_UNLESS_REVOKED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Tombstone a user and hand back (and forget) the list of their cached sessions, in one step.
_REVOKE_USER = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""
# Move the generation to at least ARGV[1] (the highest this process has seen) plus ARGV[2] (1: a
# bump, 0: a repair, which leaves a valid generation at or above ARGV[1] alone). A bump is also
# above Redis's clock in milliseconds: a process that has seen no generation yet (just started)
# still bumps above every generation in use before it, whatever the counter was set back to
# (13 digits: the 15-digit cap is far). A missing or non-numeric value counts as -1. Returns
# {the generation now, the one found, 1 if that was garbage}.
_RAISE_GENERATION = """
local raw = redis.call('GET', KEYS[1])
local found, garbage = -1, 0
if raw and #raw <= 15 and string.match(raw, '^%d+$') then found = tonumber(raw) elseif raw then garbage = 1 end
local floor, step = tonumber(ARGV[1]), tonumber(ARGV[2])
if step == 0 and found >= floor then return {found, found, 0} end
local base = math.max(found, floor)
if step > 0 then
  local clock = redis.call('TIME')
  base = math.max(base, tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
end
local now = base + step
redis.call('SET', KEYS[1], string.format('%d', now))
return {now, found, garbage}
"""
_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(Session)
FAILURES = (RedisError, OSError, TimeoutError)
_MAX_BACKOFF_S = 30.0


def connect(url: str, settings: Settings) -> Redis | RedisCluster:
    """Make a client for ``url``.

    ``redis[s]://`` or ``unix://`` (one server), ``redis[s]+cluster://host:port[,...]`` (Redis
    Cluster, any nodes to start from), ``redis[s]+sentinel://host:port[,...]/<service>[/<db>]``
    (the master Sentinel names for the service).
    """
    common: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": Retry(NoBackoff(), 0),  # our own budget and back-off decide; no hidden retries
    }
    scheme, _, rest = url.partition("://")
    tls = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        nodes = [ClusterNode(*_host_port(n)) for n in rest.split("/")[0].split("@")[-1].split(",")]
        creds = _credentials(rest)
        size = settings.redis_pool_max_size
        return RedisCluster(startup_nodes=nodes, ssl=tls, max_connections=size, **creds, **common)
    if scheme.endswith("+sentinel"):
        hosts, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        creds = _credentials(hosts)
        sentinels = [_host_port(n) for n in hosts.split("@")[-1].split(",")]
        sentinel = Sentinel(sentinels, sentinel_kwargs=common, **common)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(service, db=int(db or 0), ssl=tls, **creds)
        return master
    pool = BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_pool_max_size, timeout=settings.redis_timeout_s, **common
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port or 6379)


def _credentials(netloc: str) -> dict[str, Any]:
    if "@" not in netloc:
        return {}
    user, _, password = netloc.split("@", maxsplit=1)[0].partition(":")
    return {k: v for k, v in (("username", user), ("password", password)) if v}


def tombstone_s(settings: Settings) -> float:
    """How long a tombstone lasts: longer than any lookup can take between reading Postgres and writing here."""
    return max(settings.redis_tombstone_s, 2 * (settings.db_timeout_s + settings.redis_timeout_s))


def mac_key(settings: Settings) -> bytes:
    """The values' MAC key: from the secret, and from what a value's fields mean and may show.

    A value holds the fields one configuration answers, read through one table mapping. Another
    gateway sharing this Redis (or this one after a rolling restart) with other hidden fields,
    plugins, additional fields or mappings must not answer it as its own: under its key the MAC
    does not verify, and the value is a miss.
    """
    fields, m = settings.returned_fields, mapping_from(settings)
    tables = [[t.bare, sorted(t.overrides.items()), t.snake_case] for t in (m.session, m.user)]
    configuration = msgspec.json.encode(
        {"user": sorted(fields.user), "session": sorted(fields.session), "schema": m.db_schema}
        | {"tables": tables, "token": m.token_field}
    )
    context = b"better-auth-gateway/redis-value/v2\0" + configuration
    return hmac.digest(settings.secret.reveal().encode(), context, "sha256")


class RedisTier:
    """Signed, batched session values in Redis; every failure is a miss, never an error."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        settings: Settings,
        clock: Callable[[], float],
        observe: Callable[[float], None] | None = None,
        event: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._observe = observe or (lambda _: None)  # the time of each MGET, for the metrics
        self._event = event or (lambda _: None)  # counts a value not cached, for the metrics
        self._prefix = prefix = f"{settings.redis_prefix}:v2:"
        self._session_prefix, self._gen_key = prefix + "s:", prefix + "gen"
        self._mac_key = mac_key(settings)
        self._ttl_s = settings.l2_ttl_s
        self._timeout_s = settings.redis_timeout_s
        self._backoff_s = settings.redis_backoff_s
        self._tombstone_ms = int(tombstone_s(settings) * 1000)
        self._clock = clock
        # The highest generation seen: never go back below it (see the module docstring).
        self.generation_floor = 0
        self._repair: asyncio.Task[bool] | None = None
        self._mget = client.mget_nonatomic if isinstance(client, RedisCluster) else client.mget
        self._reads: Batcher[str, Lookup] = Batcher(self._read_many, settings.batch_max_size)
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

    async def get(self, token_digest: str) -> Lookup | None:
        """The session cached under a token hash, with the generation read; ``None`` if Redis is down."""
        if self.degraded is not None:
            return None
        return await self._reads.get(self.key(token_digest))

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Cache ``session`` (in the background) until the L2 TTL or its ``expiresAt``, whichever is first.

        ``generation`` is the one read before the session was looked up in Postgres, so a bump in
        between leaves the value unusable.
        """
        now = self._clock()
        not_after = min(now + self._ttl_s, session.expires_at)
        ttl_ms = int((not_after - now) * 1000)
        if self.degraded is not None or ttl_ms <= 0:
            return
        key = self.key(token_digest)
        try:
            body = _ENCODE.encode(session)
        except (TypeError, OverflowError, RecursionError):
            # A value msgpack cannot hold (a JSON document too deep to decode, kept as text): not
            # cached, served from Postgres each time; never an error in the lookup.
            self._event("redis_uncacheable")
            return
        payload = _HEAD.pack(generation, not_after) + body
        self._later(self._writes, (key, self._mac(key, payload) + payload, ttl_ms, session.user_id))

    def _later(self, queue: list[Any], item: Any) -> None:
        if not queue:
            asyncio.get_running_loop().call_soon(self._flush_writes)
        queue.append(item)

    async def revoke(self, token_digests: Sequence[str]) -> None:
        """Replace the sessions of these token hashes with tombstones (a best effort: never raises)."""
        await self._guarded(self._tombstone(list(token_digests)))

    async def revoke_users(self, user_ids: Sequence[str]) -> None:
        """Tombstone these users and every cached session of theirs (a best effort: never raises)."""

        async def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.eval(_REVOKE_USER, 2, *self._user_keys(user_id), self._tombstone_ms, TOMBSTONE)
            listed = await pipe.execute()
            await self._tombstone([m.decode() if isinstance(m, bytes) else m for members in listed for m in members])

        await self._guarded(run())

    async def bump_generation(self) -> bool:
        """Make every value cached so far unusable; ``False`` if Redis could not be told."""
        return await self._guarded(self._raise_generation(1))

    async def _raise_generation(self, step: int) -> None:
        """Move Redis's generation above (``step`` 1) or up to (0) the highest one seen; never down."""
        floor = self.generation_floor
        now, found, garbage = await self._client.eval(_RAISE_GENERATION, 1, self._gen_key, floor, step)
        if garbage or (found < floor and (found >= 0 or floor > 0)):
            # Nothing of ours lowers it: Redis was flushed (or restarted empty), or someone wrote it.
            was = "not a number" if garbage else "missing" if found < 0 else f"{found}"
            log.warning("the Redis generation was %s (the highest seen here: %d); set to %d", was, floor, now)
        self.generation_floor = max(self.generation_floor, int(now))

    def _repair_generation(self) -> None:
        if self._repair is None or self._repair.done():
            self._repair = asyncio.ensure_future(self._guarded(self._raise_generation(0)))
            self._background.add(self._repair)
            self._repair.add_done_callback(self._background.discard)

    async def _tombstone(self, digests: list[str]) -> None:
        if digests:
            pipe = self._client.pipeline(transaction=False)
            for digest in digests:
                pipe.set(self.key(digest), TOMBSTONE, px=self._tombstone_ms)
            await pipe.execute()

    async def _guarded(self, work: Awaitable[Any]) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await work
        except FAILURES as exc:
            self._degrade(exc)
            return False
        return True

    async def ping(self) -> None:
        """Raise if Redis does not answer ``PING`` within the budget."""
        async with asyncio.timeout(self._timeout_s):
            await self._client.ping()

    async def close(self) -> None:
        """Stop the background work and close the connections."""
        for task in (*self._background, *([self._probe] if self._probe else [])):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._client.aclose()
        # A Sentinel-made client leaves the connections to the Sentinels themselves open.
        manager = getattr(getattr(self._client, "connection_pool", None), "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()

    def _mac(self, key: str, payload: bytes) -> bytes:
        return hmac.digest(self._mac_key, key.encode() + b"\0" + payload, "sha256")[:_MAC_BYTES]

    def _open(self, key: str, raw: object, generation: int, now: float) -> Session | None:
        if not isinstance(raw, bytes) or len(raw) <= _HEAD_END:
            return None  # a miss, or a tombstone
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            # Forged, or written under another secret or field configuration (see mac_key).
            log.warning("ignored a Redis value with a bad MAC (key …%s)", key[-8:])
            return None
        value_generation, not_after = _HEAD.unpack_from(payload)
        if value_generation != generation or not_after <= now:  # retired, or written back after its time
            return None
        try:
            return _DECODE.decode(payload[_HEAD.size :])
        except msgspec.DecodeError:
            return None

    def _generation(self, raw: object) -> int | None:
        """The generation read, or ``None`` if it is below the highest seen or is not a number."""
        if raw is None:
            generation = 0
        elif isinstance(raw, bytes) and raw.isdigit() and len(raw) <= _MAX_GEN_DIGITS:
            generation = int(raw)
        else:
            return None
        if generation < self.generation_floor:
            return None
        self.generation_floor = generation
        return generation

    async def _read_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                gen_raw, *values = await self._mget([self._gen_key, *keys])
        except FAILURES as exc:
            self._degrade(exc)
            return {}
        finally:
            self._observe(time.perf_counter() - started)
        generation = self._generation(gen_raw)
        if generation is None:
            # Rolled back, or garbage: trust nothing read with it (the callers count these as
            # errors and ask Postgres), and set it back in the background. An MGET that raced
            # one of our own bumps lands here too; the repair then finds nothing to do.
            self._repair_generation()
            return {}
        now = self._clock()
        return {
            key: Lookup(self._open(key, raw, generation, now), generation)
            for key, raw in zip(keys, values, strict=True)
        }

    def _flush_writes(self) -> None:
        writes, self._writes = self._writes, []
        if not writes:
            return
        task = asyncio.ensure_future(self._guarded(self._write(writes)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, writes: list[tuple[str, bytes, int, str]]) -> None:
        # Two steps, in this order (a user's list and a session live in different hash slots):
        # list each session under its user unless the user is tombstoned, then write the ones listed.
        pipe = self._client.pipeline(transaction=False)
        for key, _, _, user_id in writes:
            digest = key[len(self._session_prefix) :]
            pipe.eval(_INDEX_UNLESS_REVOKED, 2, *self._user_keys(user_id), digest, int(self._ttl_s * 1000))
        listed = await pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        for (key, value, ttl_ms, _), ok in zip(writes, listed, strict=True):
            if ok:
                pipe.eval(_SET_UNLESS_REVOKED, 1, key, value, ttl_ms, TOMBSTONE)
        await pipe.execute()

    async def drain(self) -> None:
        """Wait for the writes queued so far (for tests, and before closing)."""
        if self._writes:
            self._flush_writes()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _degrade(self, exc: BaseException) -> None:
        """Stop using Redis and start probing it in the background until it answers again."""
        if self.degraded is None:
            self.degraded = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("Redis unavailable, serving from memory and Postgres: %s", self.degraded)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        delay = self._backoff_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.ping()
                # Revocations made while Redis was unreachable never reached it.
                async with asyncio.timeout(self._timeout_s):
                    await self._raise_generation(1)
            except FAILURES:
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            log.info("Redis is back")
            self.degraded = None
            return
