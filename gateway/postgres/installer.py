"""The triggers at startup: install or upgrade them where the role may (``GATEWAY_INSTALL_TRIGGERS``).

``gateway serve`` (and ``demo``) calls ``ensure_triggers`` once, in the main process before the
workers start, so workers never race each other; several instances starting together are
serialised by the install script's advisory lock. Where the triggers are already current nothing
is written (``CREATE TRIGGER`` locks Better Auth's tables against writes, however briefly), and
the lock wait is bounded (``SET LOCAL lock_timeout``) so a long transaction on those tables delays the
start by at most ``db_timeout_s`` and never queues Better Auth's writes behind us for longer.

Where the triggers end up absent (not permitted, ``never``, Postgres away), each worker's listener
finds that out itself and the caches bound staleness (``triggers.staleness_bound_s``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, NamedTuple

import asyncpg

from gateway.core.errors import StoreUnavailable
from gateway.postgres.connections import connect, describe, store_errors
from gateway.postgres.schema import mapping_from
from gateway.postgres.triggers import STATUS_SQL, VERSION, Status, install_sql, staleness_bound_s, status, status_args

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.postgres.schema import Mapping

log = logging.getLogger("gateway")


class Outcome(NamedTuple):
    """What became of the triggers: whether this version's are in place, and what was done."""

    current: bool
    message: str  # installed v1 | upgraded from v0 to v1 | already current | not permitted: why | ...


async def read_status(conn: asyncpg.Connection, m: Mapping, timeout_s: float) -> Status:
    """The triggers' state on the mapped tables (any version)."""
    rows = await conn.fetch(STATUS_SQL, *status_args(m), timeout=timeout_s)
    return status(rows, api_keys=m.api_key is not None)


async def ensure_triggers(settings: Settings, *, explicit: bool = False) -> Outcome:
    """Install, upgrade or just check the triggers on ``DATABASE_URL`` as ``install_triggers`` says.

    ``explicit``: asked for (``gateway install-triggers``): install even if ``never``.
    Never raises for Postgres's sake: an unreachable server or a refusal is the outcome's message.
    """
    assert settings.database_url is not None  # noqa: S101  (loaded with need={"database"})
    try:
        conn = await connect(settings.database_url.reveal(), settings.db_timeout_s)
    except StoreUnavailable as exc:
        return Outcome(current=False, message=f"not checked: {exc}")
    try:
        return await _ensure(conn, settings, explicit=explicit)
    except StoreUnavailable as exc:
        return Outcome(current=False, message=f"not checked: {exc}")
    finally:
        conn.terminate()


async def _ensure(conn: asyncpg.Connection, settings: Settings, *, explicit: bool) -> Outcome:  # noqa: PLR0911  (one per outcome)
    m = mapping_from(settings)
    with store_errors():
        async with conn.transaction():  # one server connection, even through a pooler
            found = await read_status(conn, m, settings.db_timeout_s)
    if found.current and not found.older:
        return Outcome(current=True, message=f"already current (v{VERSION})")
    if found.newer and not found.current:
        newer = max(t.version for t in found.newer)
        return Outcome(current=False, message=f"v{newer} found (a newer gateway's): left as it is")
    if settings.install_triggers == "never" and not explicit:
        if found.current:
            return Outcome(
                current=True, message=f"v{VERSION} current (older ones left: GATEWAY_INSTALL_TRIGGERS=never)"
            )
        what = f"v{found.older_versions[-1]} found, v{VERSION} wanted" if found.older else "absent"
        return Outcome(current=False, message=f"{what}; not installed (GATEWAY_INSTALL_TRIGGERS=never)")
    try:
        lock_ms = round(settings.db_timeout_s * 1000)
        sql = install_sql(m, settings.channel, older=found.older, lock_timeout_ms=lock_ms)
        await conn.execute(sql, timeout=settings.db_timeout_s * 5)
    except asyncpg.UndefinedTableError as exc:  # Better Auth has not migrated yet
        hint = "restart the gateway, or run `gateway install-triggers`, once Better Auth's migrations have run"
        return Outcome(current=False, message=f"not installed: {exc} ({hint})")
    except asyncpg.InsufficientPrivilegeError as exc:
        return Outcome(current=False, message=f"not permitted: {exc} (see `gateway install-triggers --print`)")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        return Outcome(current=False, message=f"not installed: {describe(exc)}")
    if found.older:
        versions = ", ".join(f"v{v}" for v in found.older_versions)
        return Outcome(current=True, message=f"upgraded from {versions} to v{VERSION}")
    return Outcome(current=True, message=f"installed v{VERSION}")


def startup_triggers(settings: Settings) -> Outcome | None:
    """``serve``'s step: ensure the triggers once (main process) and log what became of them.

    Nothing to do where the gateway does not listen (secondary storage, ``GATEWAY_LISTEN=false``).
    """
    if settings.secondary_storage_url is not None or not settings.listen:
        return None
    outcome = asyncio.run(ensure_triggers(settings))
    if outcome.current:
        log.info("invalidation triggers: %s", outcome.message)
    else:
        log.warning(
            "invalidation triggers: %s; a revoked session is refused within %g s (the LRU's TTL capped, "
            "Redis bypassed) until they are in place",
            outcome.message,
            staleness_bound_s(settings),
        )
    return outcome
