"""Database chores the command line does: (un)installing the triggers, checking the budget."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg

from gateway.postgres.schema import mapping_from
from gateway.postgres.store import UNAVAILABLE
from gateway.postgres.triggers import install_sql, uninstall_sql

if TYPE_CHECKING:
    from gateway.config import Settings


def trigger_sql(settings: Settings, *, uninstall: bool = False) -> str:
    """The SQL that installs (or removes) the invalidation triggers for these settings."""
    mapping = mapping_from(settings)
    return uninstall_sql(mapping) if uninstall else install_sql(mapping, settings.channel)


async def run_sql(settings: Settings, sql: str) -> None:
    """Run a script (one transaction: it carries its own BEGIN/COMMIT) on ``DATABASE_URL``."""
    assert settings.database_url is not None  # noqa: S101  (loaded with need={"database"})
    conn = await asyncpg.connect(settings.database_url.reveal(), timeout=settings.db_timeout_s)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def connection_budget(settings: Settings, instances: int = 1) -> tuple[int, str]:
    """The Postgres connections the gateway may hold, and how that number is made."""
    per_worker = settings.pool_max_size + (1 if settings.listen else 0)
    total = instances * settings.workers * per_worker
    how = f"{settings.workers} worker(s) x ({settings.pool_max_size} pooled + {int(settings.listen)} listener)"
    return total, how


async def max_connections(settings: Settings) -> int | None:
    """Postgres's ``max_connections``, or ``None`` if it can't be reached."""
    if settings.database_url is None:
        return None
    try:
        conn = await asyncpg.connect(settings.database_url.reveal(), timeout=settings.db_timeout_s)
    except UNAVAILABLE:
        return None
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


def budget_warning(settings: Settings) -> str | None:
    """A warning when one instance alone would use most of Postgres's connections."""
    total, how = connection_budget(settings)
    limit = asyncio.run(max_connections(settings))
    if limit is None:
        return f"could not reach Postgres to check its max_connections against {total} ({how})"
    if total > limit // 2:
        return (
            f"this instance may hold {total} Postgres connections ({how}), over half of max_connections={limit}; "
            "each further instance adds as many: lower GATEWAY_POOL_MAX_SIZE or GATEWAY_WORKERS"
        )
    return None
