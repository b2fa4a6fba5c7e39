"""A worker's Postgres side at start: waiting for the database, and its LISTEN listener wired to the caches."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from gateway.core.errors import BackendUnavailable, SchemaMismatch
from gateway.lookup.api_keys import listening
from gateway.postgres.listener import Listener
from gateway.postgres.triggers import staleness_bound_s

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.lookup.api_keys import ApiKeys
    from gateway.lookup.tiers import Tiers
    from gateway.postgres.store import Store
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway")


def postgres_listener(  # noqa: PLR0913  (the parts it wires, explicitly)
    settings: Settings,
    store: Store,
    tiers: Tiers,
    metrics: Metrics,
    api_keys: ApiKeys | None,
    *,
    revoked_for_s: float,
) -> Listener:
    """The LISTEN listener; with a replica, the store checks its hits on the primary when in doubt.

    While it finds the triggers absent, the caches bound their staleness (``bound_staleness``).
    Before it has looked (Postgres away), they do not: what it caches then is flushed when it connects.
    ``revoked_for_s``: how long a revocation is remembered (the replica distrusted after a flush).
    """
    bound = staleness_bound_s(settings)
    on_triggers = lambda ok: tiers.bound_staleness(None if ok else bound)  # noqa: E731
    invalidator, on_triggers, on_api_key = listening(tiers, api_keys, on_triggers, bound)
    if settings.read_database_url is None:
        return Listener(settings, invalidator, metrics, on_triggers=on_triggers, on_api_key=on_api_key)
    store.doubt_with(tiers.revoked_lately)  # revoked lately: the replica may not show it yet
    return Listener(
        settings,
        invalidator,
        metrics,
        on_flush=partial(store.distrust_replica, revoked_for_s),
        on_triggers=on_triggers,
        on_api_key=on_api_key,
    )


async def wait_for_postgres(store: Store, budget_s: float) -> None:
    """Wait (with back-off, at most ``budget_s``) for Postgres to answer; then serve whatever it says."""
    deadline, delay = time.monotonic() + budget_s, 0.1
    while True:
        try:
            await store.ping()  # also reads the catalogue, so the first request needn't
        except SchemaMismatch as exc:  # waiting won't fix a configuration
            log.error("Better Auth's tables are not as configured (503 until they are): %s", exc)  # noqa: TRY400
            return
        except BackendUnavailable as exc:
            if time.monotonic() + delay > deadline:
                log.warning("Postgres is not ready; serving anyway (503 until it is): %s", exc)
                return
            log.info("waiting for Postgres (retrying in %.1fs): %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return
