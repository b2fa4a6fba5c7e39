"""The shared tier: sessions in Redis, for every worker and every instance.

- Keys are ``<prefix>:v1:s:<sha256(token)>``: a dump of Redis reveals no usable token.
- Values are ``MAC || msgpack(Session)``, the MAC an HMAC-SHA256 (keyed from the secret) over key
  and value: whoever can write to Redis still cannot mint a session. A bad MAC is a miss.
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
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.batching import Batcher
from gateway.sessions import Session

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from gateway.config import Settings

log = logging.getLogger("gateway.redis")

_MAC_BYTES = 16  # 128-bit tag
_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(Session)
FAILURES = (RedisError, OSError, TimeoutError)
_MAX_BACKOFF_S = 30.0


def token_hash(token: str) -> str:
    """SHA-256 of a token, hex: the only form of a token that leaves the process."""
    return hashlib.sha256(token.encode()).hexdigest()


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


class RedisTier:
    """Signed, batched session values in Redis; every failure is a miss, never an error."""

    def __init__(self, client: Redis | RedisCluster, settings: Settings, clock: Callable[[], float]) -> None:
        self._client = client
        self._prefix = f"{settings.redis_prefix}:v1:s:"
        self._mac_key = hmac.digest(settings.secret.reveal().encode(), b"better-auth-gateway/redis-value/v1", "sha256")
        self._ttl_s = settings.l2_ttl_s
        self._timeout_s = settings.redis_timeout_s
        self._backoff_s = settings.redis_backoff_s
        self._clock = clock
        self._mget = client.mget_nonatomic if isinstance(client, RedisCluster) else client.mget
        self._reads: Batcher[str, Session] = Batcher(self._read_many, settings.batch_max_size)
        self._writes: list[tuple[str, bytes, int]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.degraded: str | None = None  # why Redis is being skipped, while it is
        self._probe: asyncio.Task[None] | None = None

    def key(self, token_digest: str) -> str:
        """The Redis key of a session, from its token's hash."""
        return self._prefix + token_digest

    async def get(self, token_digest: str) -> Session | None:
        """The session cached under a token hash, or ``None`` (a miss, a bad MAC, or Redis down)."""
        if self.degraded is not None:
            return None
        return await self._reads.get(self.key(token_digest))

    def put(self, token_digest: str, session: Session) -> None:
        """Cache ``session`` (in the background) until the L2 TTL or its ``expiresAt``, whichever is first."""
        ttl_ms = int(min(self._ttl_s, session.expires_at - self._clock()) * 1000)
        if self.degraded is not None or ttl_ms <= 0:
            return
        key = self.key(token_digest)
        payload = _ENCODE.encode(session)
        if not self._writes:
            asyncio.get_running_loop().call_soon(self._flush_writes)
        self._writes.append((key, self._mac(key, payload) + payload, ttl_ms))

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

    def _open(self, key: str, raw: object) -> Session | None:
        if not isinstance(raw, bytes) or len(raw) <= _MAC_BYTES:
            return None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            log.warning("ignored a Redis value with a bad MAC (key %s…)", key[-64:-48])
            return None
        try:
            return _DECODE.decode(payload)
        except msgspec.DecodeError:
            return None

    async def _read_many(self, keys: Sequence[str]) -> Mapping[str, Session]:
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self._mget(list(keys))
        except FAILURES as exc:
            self._degrade(exc)
            return {}
        found = {key: self._open(key, raw) for key, raw in zip(keys, values, strict=True)}
        return {key: s for key, s in found.items() if s is not None}

    def _flush_writes(self) -> None:
        writes, self._writes = self._writes, []
        task = asyncio.ensure_future(self._write(writes))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, writes: list[tuple[str, bytes, int]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for key, value, ttl_ms in writes:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()
        except FAILURES as exc:
            self._degrade(exc)

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
            except FAILURES:
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            log.info("Redis is back")
            self.degraded = None
            return
