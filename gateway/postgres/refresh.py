"""The sliding refresh's write: Better Auth's own ``UPDATE``, made conditional so that racing writers write once.

Better Auth runs ``UPDATE "session" SET "expiresAt" = $1, "updatedAt" = $2 WHERE "token" = $3
RETURNING *`` (``internalAdapter.updateSession``) with ``expiresAt = now + expiresIn`` and
``updatedAt = now``, JavaScript ``Date``s (milliseconds). The gateway sets the same two columns to
the same values, and adds two conditions: the row must still be due (``expiresAt <= now +
expiresIn - updateAge``) and unexpired (``expiresAt > now``, by the gateway's clock and by
Postgres's ``clock_timestamp()`` as the row is checked: a revocation that commits after the
gateway read its clock is not slid over). A second writer racing the first
waits for its row lock, then finds the slid row no longer due and writes nothing (Postgres
re-checks the condition on the row it waited for, under READ COMMITTED); it reads that row back
in a statement of its own, whose snapshot shows the first writer's commit. An expired or revoked
session is never extended.

The ``UPDATE`` returns the row joined to its user with the lookup's own select list, so the slid
session is read exactly as a lookup reads it. Always on the primary (``DATABASE_URL``), never a
replica; through a transaction-mode pooler, in a read-write transaction of its own.

The columns are written in their own types: ``timestamptz`` and ``timestamp`` (UTC, as Better
Auth's adapters write them), or a number of milliseconds (custom schemas).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import asyncpg

from gateway.config.refresh import refresh_mode
from gateway.core.errors import StoreUnavailable
from gateway.lookup.refresh import Refresher, Rule, Slid
from gateway.postgres.rows import row_session
from gateway.postgres.schema import mapping_from, quote

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import Settings
    from gateway.lookup.tiers import Tiers
    from gateway.postgres.schema import Mapping, Query
    from gateway.postgres.store import Store

# The type of a timestamp column (information_schema.columns.data_type), or None if missing.
TYPE_SQL = """
SELECT data_type FROM information_schema.columns
WHERE table_schema = coalesce(nullif($1, ''), current_schema()) AND table_name = $2 AND column_name = $3
"""
DENIED_FOR_S = 60.0  # a role refused the write: how long before trying again
_NUMBERS = frozenset({"bigint", "integer", "numeric", "double precision", "real"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def slide_sql(m: Mapping, query: Query, expires_type: str | None = None) -> str:
    """The conditional ``UPDATE … RETURNING`` joined to the user, read with ``query``'s select list.

    ``$1`` the token; ``$2`` the new ``expiresAt``; ``$3`` the new ``updatedAt``; ``$4`` the
    latest ``expiresAt`` still due; ``$5`` now (in ``expiresAt``'s type). ``expires_type``: the
    column's type, for the server's own clock (``_server_now``).
    """
    s, u = m.session, m.user
    token, expires, updated = (quote(s.column(f)) for f in (m.token_field, "expiresAt", "updatedAt"))
    join = f"JOIN {u.name} AS u ON u.{quote(u.column('id'))} = s.{quote(s.column('userId'))}"
    join += f" {query.extra_join}" if query.extra_join else ""  # the member's role: read as the lookup reads it
    update = f"UPDATE {s.name} SET {expires} = $2, {updated} = $3"  # noqa: S608  (identifiers quoted)
    due = f"WHERE {token} = $1 AND {expires} <= $4 AND {expires} > $5"
    server_now = _server_now(expires_type)
    if server_now:  # red team: a revocation (expiresAt = now) committed after $5 was read is not slid over
        due += f" AND {expires} > {server_now}"
    return f"WITH s AS ({update} {due} RETURNING *) SELECT {query.select} FROM s {join}"  # noqa: S608  (identifiers quoted, values bound)


def _server_now(data_type: str | None) -> str:
    """Postgres's clock as the row is (re)checked, in the column's type; empty for a type it is not read in.

    ``clock_timestamp()``, not ``now()``: it is read again when the ``UPDATE`` re-checks a row it
    waited for, so a revocation committed while the gateway's own ``now`` was on its way is seen.
    """
    if data_type in _NUMBERS:
        return "(extract(epoch from clock_timestamp()) * 1000)"
    if data_type == "timestamp without time zone":  # UTC, as Better Auth's adapters write it
        return "(clock_timestamp() AT TIME ZONE 'UTC')"
    return "clock_timestamp()" if data_type == "timestamp with time zone" else ""


def column_value(data_type: str | None, epoch_ms: int) -> dt.datetime | int:
    """``epoch_ms`` as a column of ``data_type`` holds it: a UTC datetime, or milliseconds for a number."""
    if data_type in _NUMBERS:
        return epoch_ms
    return _EPOCH + dt.timedelta(milliseconds=epoch_ms)


def sliding_refresh(settings: Settings, store: Store, tiers: Tiers, clock: Callable[[], float]) -> Refresher | None:
    """The sliding refresh on ``store``'s primary, unless read-only (``refresh_mode`` off)."""
    if refresh_mode(settings) == "off":
        return None
    rule = Rule(settings.session_expires_in_s, settings.session_update_age_s)
    return Refresher(PostgresWriter(store, mapping_from(settings), rule), tiers, rule, clock)


# Whether this role may write the two columns a slide sets (a column or a table privilege), and whether both exist.
PRIVILEGE_SQL = """SELECT count(*), coalesce(bool_and(has_column_privilege(a.attrelid, a.attnum, 'UPDATE')), false)
FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2::text[]) AND NOT a.attisdropped"""


async def refresh_privilege(conn: asyncpg.Connection, settings: Settings, m: Mapping) -> tuple[str, str]:
    """What ``check-config`` says of the sliding refresh: ``(level, text)``, a warning if this role cannot slide."""
    mode = refresh_mode(settings)
    if mode == "off":
        return "ok", "sliding refresh: off, read-only (the gateway never writes to Better Auth's tables)"
    where = "on get-session" if mode == "get-session" else "on get-session, /validate and /v1/validate"
    columns = [m.session.column(f) for f in ("expiresAt", "updatedAt")]
    named = " and ".join(quote(c) for c in columns)
    found, may = await conn.fetchrow(PRIVILEGE_SQL, m.session.name, columns, timeout=settings.db_timeout_s)
    if found == len(columns) and may:
        return "ok", f"sliding refresh {where}: this role may UPDATE {named} of {m.session.name} (its only write)"
    why = "has no such columns" if found != len(columns) else "may not UPDATE them"
    return "warning", (
        f"sliding refresh {where}, but this role {why} ({named} of {m.session.name}): due sessions are answered "
        f"without sliding, and Better Auth's users are signed out after expiresIn (GRANT UPDATE "
        f"({', '.join(quote(c) for c in columns)}) ON {m.session.name} TO <role>, or GATEWAY_SESSION_REFRESH=off "
        "to say read-only is meant)"
    )


class PostgresWriter:
    """``lookup.refresh.SessionWriter`` on Better Auth's session table."""

    def __init__(self, store: Store, mapping: Mapping, rule: Rule) -> None:
        self._store = store
        self._mapping = mapping
        self._rule = rule
        self._prepared: tuple[str, str | None, str | None] | None = None  # SQL, expiresAt's and updatedAt's types
        self.writes = 0  # rows this process slid, for tests
        self.attempts = 0  # slides sent to Postgres, for tests
        self._denied_until = 0.0  # monotonic: until then, a write is not attempted (the role may not)

    async def slide(self, token: str, now_ms: int) -> Slid:
        """Slide ``token``'s row if still due and unexpired at ``now_ms`` (``SessionWriter.slide``).

        A role without the privilege is not asked again for a minute: its refusal is no outage,
        and a query per due request would be one for nothing.
        """
        if time.monotonic() < self._denied_until:
            msg = f"this role may not UPDATE {self._mapping.session.name} (check-config says what to grant)"
            raise StoreUnavailable(msg)
        self.attempts += 1
        try:
            return await self._store.on_primary(lambda c, q: self._slide(c, q, token, now_ms), read_only=False)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, asyncpg.InsufficientPrivilegeError | asyncpg.ReadOnlySQLTransactionError):
                self._denied_until = time.monotonic() + DENIED_FOR_S
            raise

    async def _slide(self, conn: asyncpg.Connection, query: Query, token: str, now_ms: int) -> Slid:
        sql, expires_type, updated_type = self._prepared or await self._prepare(conn, query)
        rule = self._rule
        expires_in_ms, slack_ms = int(rule.expires_in_s * 1000), int(rule.slack * 1000)
        row = await conn.fetchrow(
            sql,
            token,
            column_value(expires_type, now_ms + expires_in_ms),
            column_value(updated_type, now_ms),
            column_value(expires_type, now_ms + slack_ms),
            column_value(expires_type, now_ms),
        )
        if row is not None:
            self.writes += 1
            return Slid(row_session(query, row, 0), written=True)
        # Not due any more (slid by another writer), expired, or gone: the row as it is now.
        row = await conn.fetchrow(query.sql, token)
        return Slid(None if row is None else row_session(query, row, 0), written=False)

    async def _prepare(self, conn: asyncpg.Connection, query: Query) -> tuple[str, str | None, str | None]:
        m = self._mapping
        schema, table = m.db_schema, m.session.bare
        types = [await conn.fetchval(TYPE_SQL, schema, table, m.session.column(f)) for f in ("expiresAt", "updatedAt")]
        self._prepared = (slide_sql(m, query, types[0]), types[0], types[1])
        return self._prepared
