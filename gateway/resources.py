"""Everything a worker opens, opened in one place in order and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import msgspec
from redis.asyncio.cluster import RedisCluster

from gateway.config import load_settings
from gateway.core.errors import BackendUnavailable, CacheUnavailable
from gateway.credentials.cookie_cache import CookieCache
from gateway.credentials.jwts import JwtVerifier, endpoint_keys
from gateway.credentials.tokens import Verifier
from gateway.http import policy
from gateway.http.app import App
from gateway.lookup.decision import Decider
from gateway.lookup.tiers import Tiers
from gateway.lookup.traced import traced
from gateway.postgres.api_keys import open_api_keys
from gateway.postgres.listener import Listener
from gateway.postgres.refresh import sliding_refresh
from gateway.postgres.schema import mapping_from
from gateway.postgres.startup import postgres_listener, wait_for_postgres
from gateway.postgres.store import Store
from gateway.redis.client import connect
from gateway.redis.keyspace import KeyspaceListener
from gateway.redis.secondary_storage import SecondaryStorage
from gateway.redis.tier import RedisTier, tombstone_s
from gateway.telemetry.logs import configure_logging
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

    from gateway.config import Secret, Settings
    from gateway.lookup.protocols import SessionSource
    from gateway.lookup.refresh import Refresher

log = logging.getLogger("gateway")


class Readiness(NamedTuple):
    """What ``/readyz`` reports: parts that answer, parts degraded (still serving), parts failing."""

    ok: list[str]
    degraded: dict[str, str]
    failing: dict[str, str]


class Resources(NamedTuple):
    """The wired-up parts one worker serves from."""

    store: Store | None  # Postgres, the source of truth; or, in secondary-storage mode,
    secondary: SecondaryStorage | None  # Better Auth's Redis
    redis: RedisTier | None
    tiers: Tiers
    decider: Decider
    listener: Listener | KeyspaceListener | None
    metrics: Metrics
    refresher: Refresher | None = None  # the sliding refresh's writer: Postgres only (gateway.lookup.refresh)

    async def pings(self) -> Readiness:
        """Ping every dependency. The session store down fails readiness; Redis down only degrades it."""
        ready = Readiness([], {}, {})
        source, name = (self.store, "postgres") if self.store is not None else (self.secondary, "secondary_storage")
        try:
            if source is not None:
                await source.ping()
            ready.ok.append(name)
        except BackendUnavailable as exc:
            ready.failing[name] = str(exc)
        if self.redis is not None:
            try:
                await self.redis.ping()
            except CacheUnavailable as exc:
                ready.degraded["redis"] = str(exc)
            else:
                if self.redis.degraded is None:
                    ready.ok.append("redis")
                else:
                    ready.degraded["redis"] = f"recovering from: {self.redis.degraded}"
        if self.listener is not None:
            if not self.listener.connected:
                ready.degraded["listener"] = "not connected: revocations wait for the cache TTL"
            elif isinstance(self.listener, Listener) and not self.listener.triggers_installed:
                ready.degraded["listener"] = (
                    f"no invalidation triggers: a revoked session is refused within {self.listener.bound_s:g} s "
                    "(gateway install-triggers)"
                )
            else:
                ready.ok.append("listener")
        return ready


@contextlib.asynccontextmanager
async def open_resources(settings: Settings, clock: Callable[[], float] = time.time) -> AsyncIterator[Resources]:
    """Open the metrics, the Postgres pool, Redis and the listener, in that order; close in reverse.

    Startup waits for Postgres (with back-off, at most ``startup_wait_s``) rather than crash in a
    loop; if it is still away, the gateway serves anyway: 503s, and ``/readyz`` says why.
    """
    async with contextlib.AsyncExitStack() as stack:
        metrics = Metrics()
        store, secondary, ttl_s = None, None, settings.l1_ttl_s
        source: SessionSource
        if settings.secondary_storage_url is not None:
            source = secondary = await _open_secondary(settings.secondary_storage_url, settings, stack)
            if not await secondary.notifications_on():
                log.warning("Redis keyspace notifications are off: revocations reach the LRU within 1 s, not at once")
                ttl_s = min(ttl_s, 1.0)
        else:
            source = store = Store(settings, mapping_from(settings), metrics.event)
            await store.open()
            stack.push_async_callback(store.close)
            await wait_for_postgres(store, settings.startup_wait_s)
        redis = None
        if settings.redis_url is not None:
            client = _connect_redis(settings.redis_url.reveal(), settings)
            observe = metrics.backend_seconds.labels("redis").observe
            configuration = value_configuration(settings)
            redis = RedisTier(client, settings, configuration, clock, observe=observe, event=metrics.event)
            stack.push_async_callback(redis.close)
        source, shared = traced(stack, os.environ, source, redis, "postgresql" if store is not None else "redis")
        tiers = Tiers(
            source,
            shared,
            max_entries=settings.l1_max_entries,
            ttl_s=ttl_s,
            negative_max_entries=settings.negative_max_entries,
            negative_ttl_s=settings.negative_ttl_s,
            batch_max_size=settings.batch_max_size,
            revoked_for_s=_revoked_for_s(settings),
            clock=clock,
            metrics=metrics,
        )
        verifier = Verifier(
            settings.secret.reveal(),
            accept_unsigned=settings.accept_unsigned_bearer,
            legacy_ids=settings.token_field == "id",  # noqa: S105  (a column name)
        )
        api_keys = open_api_keys(settings, store, ttl_s, metrics, clock)  # GATEWAY_API_KEYS=on
        listener: Listener | KeyspaceListener | None = None
        if secondary is not None and ttl_s == settings.l1_ttl_s:
            listener = KeyspaceListener(secondary, tiers, settings.redis_backoff_s, event=metrics.event)
        elif store is not None and settings.listen:
            listener = postgres_listener(
                settings, store, tiers, metrics, api_keys, revoked_for_s=_revoked_for_s(settings)
            )
        if listener is not None:
            listener.start()
            stack.push_async_callback(listener.close)
        metrics.samplers.append(lambda: _gauges(store, redis, listener))
        stack.push_async_callback(_flush_every(metrics, settings.metrics_flush_s))
        cookie_cache, jwts = _cookie_cache(settings), _jwts(settings, store)
        decider = Decider(verifier, tiers, cookie_cache, jwts, api_keys)
        stack.push_async_callback(decider.settled)  # before the store closes: rechecks under way end
        refresher = None if store is None else sliding_refresh(settings, store, tiers, clock)
        yield Resources(store, secondary, redis, tiers, decider, listener, metrics, refresher)


def value_configuration(settings: Settings) -> bytes:
    """What the shared tier's values mean and may show, as the bytes their MAC key binds (``redis.values``).

    The answered fields and the table mapping they are read through: a gateway configured
    otherwise computes another key, and takes another's values for misses. Changing these bytes
    for an unchanged configuration retires every value in Redis (one cold start).
    """
    fields, m = settings.returned_fields, mapping_from(settings)
    tables = [[t.bare, sorted(t.overrides.items()), t.snake_case] for t in (m.session, m.user)]
    described: dict[str, object] = {"user": sorted(fields.user), "session": sorted(fields.session)}
    described |= {"schema": m.db_schema, "tables": tables, "token": m.token_field}
    if m.member is not None:  # organizations: a value without the member's role is not one of ours (off: unchanged)
        described |= {"member": [m.member.bare, sorted(m.member.overrides.items()), m.member.snake_case]}
    return msgspec.json.encode(described)


def create_app() -> App:
    """Build the app from the environment, wired to the parts opened here: granian's factory.

    Called once in each worker (``gateway serve`` names it ``gateway.resources:create_app``); a
    bad rules file stops the worker as it stops ``serve``.
    """
    settings = load_settings(checks=(policy.rules_file_problems,))
    configure_logging(settings.log_level, settings.log_format)
    return App(settings, open_resources)


def _cookie_cache(settings: Settings) -> CookieCache | None:
    """Better Auth's cookie cache reader, when it is on."""
    if settings.cookie_cache == "off":
        return None
    secrets = tuple(s.reveal() for s in settings.secrets)
    fields = settings.returned_fields
    return CookieCache(settings.cookie_cache, secrets, version=settings.cookie_cache_version, fields=fields)


def _jwts(settings: Settings, store: Store | None) -> JwtVerifier | None:
    """The JWT plugin's verifier, when an audience is configured: keys from its JWKS URL or its table."""
    audience, issuer = settings.jwt_claims
    if not audience:
        return None
    url, timeout = settings.jwt_jwks_url, settings.db_timeout_s
    keys = endpoint_keys(url, timeout) if url or store is None else partial(store.public_keys, settings.jwt_jwks_table)
    return JwtVerifier(keys, audience=audience, issuer=issuer)


def _revoked_for_s(settings: Settings) -> float:
    """How long a revoked token or user is remembered: as long as anything cached before could be offered."""
    windows = [10.0]
    if settings.redis_url is not None:
        windows += [tombstone_s(settings), settings.l2_ttl_s]  # a value's own lifetime bounds a replay
    if settings.cookie_cache != "off":
        windows.append(settings.cookie_cache_max_age_s)
    return max(windows)


async def _open_secondary(url: Secret, settings: Settings, stack: contextlib.AsyncExitStack) -> SecondaryStorage:
    client = _connect_redis(url.reveal(), settings)
    assert not isinstance(client, RedisCluster)  # noqa: S101  (refused by the settings' checks)
    storage = SecondaryStorage(
        client, settings.secondary_storage_prefix, settings.redis_timeout_s, settings.returned_fields
    )
    stack.push_async_callback(storage.close)
    return storage


def _connect_redis(url: str, settings: Settings) -> Redis | RedisCluster:
    return connect(url, timeout_s=settings.redis_timeout_s, pool_max_size=settings.redis_pool_max_size)


def _gauges(store: Store | None, redis: RedisTier | None, listener: object) -> dict[str, float]:
    size, idle = store.pool_sizes() if store is not None else (0, 0)
    return {
        "pool_connections": size,
        "pool_connections_idle": idle,
        "listener_connected": float(getattr(listener, "connected", False)),
        "redis_degraded": float(redis is not None and redis.degraded is not None),
    }


def _flush_every(metrics: Metrics, interval_s: float) -> Callable[[], Awaitable[None]]:
    """Start flushing the metrics every ``interval_s``; return the closer (which flushes once more)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            metrics.flush()

    task = asyncio.ensure_future(loop())

    async def close() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        metrics.flush()

    return close
