"""Database chores the command line does: (un)installing the triggers, checking the database and the budget."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

from gateway.core.errors import StoreUnavailable
from gateway.postgres import organizations
from gateway.postgres.api_keys import build_key_query
from gateway.postgres.connections import connect, store_errors
from gateway.postgres.installer import read_status
from gateway.postgres.refresh import refresh_privilege
from gateway.postgres.schema import COLUMNS_SQL, build_query, mapping_from
from gateway.postgres.store import PRIMARY_POOL_MAX
from gateway.postgres.triggers import VERSION, install_sql, staleness_bound_s, uninstall_sql

if TYPE_CHECKING:
    import asyncpg

    from gateway.config import Settings
    from gateway.postgres.schema import Mapping

_RESERVED = 3  # Postgres's default superuser_reserved_connections


def trigger_sql(settings: Settings, *, uninstall: bool = False) -> str:
    """The SQL that installs (or removes) the invalidation triggers for these settings."""
    mapping = mapping_from(settings)
    return uninstall_sql(mapping) if uninstall else install_sql(mapping, settings.channel)


async def run_sql(settings: Settings, sql: str) -> None:
    """Run a script (one transaction: it carries its own BEGIN/COMMIT) on ``DATABASE_URL``, the primary.

    Raises:
        StoreUnavailable: Postgres could not be reached, or refused the script.
    """
    assert settings.database_url is not None  # noqa: S101  (loaded with need={"database"})
    conn = await connect(settings.database_url.reveal(), settings.db_timeout_s)
    try:
        with store_errors():
            await conn.execute(sql)
    finally:
        conn.terminate()


class Budget(NamedTuple):
    """The Postgres connections N instances of the gateway may hold, and how that number is made."""

    total: int
    how: str


def connection_budget(settings: Settings, instances: int = 1) -> Budget:
    """``instances x workers x (pool [+ primary pool] + listener)``: each worker holds its own."""
    s = settings
    parts = [(s.pool_max_size, "lookups" + (" on the replica" if s.read_database_url else ""))]
    if s.read_database_url is not None:
        parts.append((min(PRIMARY_POOL_MAX, s.pool_max_size), "replica misses on the primary"))
    if s.listen:
        parts.append((1, "listener"))
    per_worker = sum(n for n, _ in parts)
    terms = " + ".join(f"{n} {name}" for n, name in parts)
    how = f"{instances} instance(s) x {s.workers} worker(s) x ({terms})"
    return Budget(instances * s.workers * per_worker, how)


async def max_connections(settings: Settings) -> int | None:
    """The primary's ``max_connections`` (through the listener's URL: Postgres itself), or ``None``."""
    url = settings.listen_database_url or settings.database_url
    if url is None:
        return None
    try:
        conn = await connect(url.reveal(), settings.db_timeout_s)
    except StoreUnavailable:
        return None
    try:
        with store_errors():
            async with conn.transaction():  # one server connection, even through a pooler
                return int(await conn.fetchval("SHOW max_connections"))
    except StoreUnavailable:
        return None
    finally:
        conn.terminate()


def budget_lines(settings: Settings, instances: int = 1) -> tuple[str, str | None]:
    """What ``check-config`` says of the connection budget: the statement, and a warning if any."""
    budget = connection_budget(settings, instances)
    statement = f"connection budget: {budget.total} Postgres connections at most = {budget.how}"
    limit = asyncio.run(max_connections(settings))
    if limit is None:
        return statement, f"could not reach Postgres to check its max_connections against {budget.total}"
    # One instance: leave room for more (and Better Auth's own); several: they must fit at all.
    room = limit // 2 if instances == 1 else limit - _RESERVED
    if budget.total > room:
        return statement, (
            f"{budget.total} connections would be over {'half of ' if instances == 1 else ''}"
            f"Postgres's max_connections={limit}: "
            "lower GATEWAY_POOL_MAX_SIZE or GATEWAY_WORKERS, or put PgBouncer in front for lookups "
            "(its default_pool_size then bounds what reaches Postgres)"
        )
    return statement, None


class Finding(NamedTuple):
    """One thing ``check-config`` found in the database: ``problem`` (exit non-zero), ``warning`` or ``ok``."""

    level: str
    text: str


# Whether this role could install the triggers: CREATE on the functions' schema, and the tables
# (of those the triggers go on) it has no TRIGGER privilege on, by their quoted names.
_MAY_INSTALL_SQL = """SELECT has_schema_privilege(coalesce(nullif($2, ''), current_schema()), 'CREATE'),
  coalesce(array_agg(t) FILTER (WHERE NOT has_table_privilege(to_regclass(t), 'TRIGGER')), '{}')
  FROM unnest($1::text[]) AS t"""


async def check_database(settings: Settings) -> list[Finding]:
    """Check ``DATABASE_URL``'s tables and columns as mapped, and the triggers; unreachable is a warning."""
    assert settings.database_url is not None  # noqa: S101  (loaded with need={"database"})
    try:
        conn = await connect(settings.database_url.reveal(), settings.db_timeout_s)
    except StoreUnavailable as exc:
        return [Finding("warning", f"could not reach Postgres to check the tables and triggers: {exc}")]
    try:
        with store_errors():
            async with conn.transaction():  # one server connection, even through a pooler
                m = mapping_from(settings)
                return [*await _check(conn, settings, m), Finding(*await refresh_privilege(conn, settings, m))]
    except StoreUnavailable as exc:
        return [Finding("warning", f"could not finish checking the database: {exc}")]
    finally:
        conn.terminate()


async def _check(conn: asyncpg.Connection, settings: Settings, m: Mapping) -> list[Finding]:
    timeout = settings.db_timeout_s
    columns = [
        [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, t.bare, timeout=timeout)] for t in (m.session, m.user)
    ]
    try:
        extra = None  # organizations: the member table's columns, where it is read
        if m.member is not None:
            member_columns = [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, m.member.bare, timeout=timeout)]
            extra = organizations.joined(m, columns[0], member_columns)
        build_query(m, columns[0], columns[1], extra)
    except LookupError as exc:
        hint = f"GATEWAY_SCHEMA_PRESET={settings.schema_preset}: is that how Better Auth made them?"
        return [Finding("problem", f"Better Auth's tables are not as configured: {exc} ({hint})")]
    tables = Finding("ok", f"tables: {m.session.name} and {m.user.name} have the mapped columns")
    if m.api_key is not None:  # GATEWAY_API_KEYS=on: the plugin's table must be there, as mapped
        try:
            await build_key_query(conn, m.api_key, m, timeout)
        except LookupError as exc:
            return [tables, Finding("problem", f"API keys (GATEWAY_API_KEYS=on): {exc}")]
        tables = Finding("ok", f"tables: {m.session.name}, {m.user.name} and {m.api_key.name} have the mapped columns")
    if settings.secondary_storage_url is not None or not settings.listen:
        return [tables]
    found = await read_status(conn, m, timeout)
    if found.current:
        return [tables, Finding("ok", f"invalidation triggers: v{VERSION} in place")]
    # The plugins' tables carry triggers too where their features are on (``plugin_triggers``).
    triggered = [t.name for t in (m.session, m.user, m.api_key, m.member) if t is not None]
    schema_ok, unprivileged = await conn.fetchrow(_MAY_INSTALL_SQL, triggered, m.db_schema, timeout=timeout)
    what = f"v{found.older_versions[-1]}, older than v{VERSION}" if found.older else f"v{VERSION} absent"
    bound = f"until they are, a revoked session is refused within {staleness_bound_s(settings):g} s"
    if settings.install_triggers == "never":
        text = f"invalidation triggers: {what}, and GATEWAY_INSTALL_TRIGGERS=never; {bound}"
    elif schema_ok and not unprivileged:
        text = f"invalidation triggers: {what}; `gateway serve` will install them at startup (this role may)"
        return [tables, Finding("ok", text)]
    else:
        missing = "CREATE on the schema" if not schema_ok else f"TRIGGER privilege on {', '.join(unprivileged)}"
        text = f"invalidation triggers: {what}, and this role may not install them (no {missing}); {bound}"
    return [tables, Finding("warning", text + " (`gateway install-triggers --print` shows the SQL)")]
