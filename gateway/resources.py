"""Everything a worker opens, opened in one place in order and closed in reverse."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

from gateway.decision import Decider
from gateway.errors import BackendUnavailable
from gateway.invalidation import Listener
from gateway.redis_tier import FAILURES as REDIS_FAILURES
from gateway.redis_tier import RedisTier, connect
from gateway.schema import mapping_from
from gateway.store import Store
from gateway.tiers import Tiers
from gateway.tokens import Verifier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.config import Settings

log = logging.getLogger("gateway")


class Readiness(NamedTuple):
    """What ``/readyz`` reports: parts that answer, parts degraded (still serving), parts failing."""

    ok: list[str]
    degraded: dict[str, str]
    failing: dict[str, str]


class Resources(NamedTuple):
    """The wired-up parts one worker serves from."""

    store: Store
    redis: RedisTier | None
    tiers: Tiers
    decider: Decider
    listener: Listener | None

    async def pings(self) -> Readiness:
        """Ping every dependency. Postgres down fails readiness; Redis down only degrades it."""
        ready = Readiness([], {}, {})
        try:
            await self.store.ping()
            ready.ok.append("postgres")
        except BackendUnavailable as exc:
            ready.failing["postgres"] = str(exc)
        if self.redis is not None:
            try:
                await self.redis.ping()
            except REDIS_FAILURES as exc:
                ready.degraded["redis"] = f"{type(exc).__name__}: {exc}"
            else:
                if self.redis.degraded is None:
                    ready.ok.append("redis")
                else:
                    ready.degraded["redis"] = f"recovering from: {self.redis.degraded}"
        if self.listener is not None:
            if not self.listener.connected:
                ready.degraded["listener"] = "not connected: revocations wait for the cache TTL"
            elif not self.listener.triggers_installed:
                ready.degraded["listener"] = "no triggers installed (gateway install-triggers)"
            else:
                ready.ok.append("listener")
        return ready


@contextlib.asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Open the Postgres pool, then Redis, and build the tiers; close in reverse order on exit."""
    async with contextlib.AsyncExitStack() as stack:
        store = Store(settings, mapping_from(settings))
        await store.open()
        stack.push_async_callback(store.close)
        with contextlib.suppress(BackendUnavailable):
            await store.ping()  # read the catalogue now if Postgres is there; else on first use
        redis = None
        if settings.redis_url is not None:
            redis = RedisTier(connect(settings.redis_url.reveal(), settings), settings, time.time)
            stack.push_async_callback(redis.close)
        tiers = Tiers(
            store,
            redis,
            max_entries=settings.l1_max_entries,
            ttl_s=settings.l1_ttl_s,
            negative_max_entries=settings.negative_max_entries,
            negative_ttl_s=settings.negative_ttl_s,
            batch_max_size=settings.batch_max_size,
        )
        verifier = Verifier(
            settings.secret.reveal(),
            accept_unsigned=settings.accept_unsigned_bearer,
            legacy_ids=settings.token_field == "id",  # noqa: S105  (a column name)
        )
        listener = None
        if settings.listen:
            listener = Listener(settings, tiers)
            listener.start()
            stack.push_async_callback(listener.close)
        yield Resources(store, redis, tiers, Decider(verifier, tiers), listener)
