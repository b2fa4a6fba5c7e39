"""Postgres, the source of truth: one prepared join on Better Auth's own tables, read-only.

The pool skips asyncpg's reset on release (``docs/performance.md`` §3): a second round trip
per lookup, and only needed when connections carry session state. Ours never do: the gateway
runs nothing but SELECTs on pooled connections (LISTEN has a connection of its own).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import msgspec

from gateway.core import column_values
from gateway.core.column_values import FarTime
from gateway.core.errors import SchemaMismatch, StoreUnavailable
from gateway.core.sessions import Session
from gateway.postgres.schema import COLUMNS_SQL, Mapping, Query, build_query, quote

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from gateway.config import Settings

log = logging.getLogger("gateway.postgres.store")

# Failures that mean "Postgres could not answer", as opposed to a bug in the gateway.
UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_UTC = dt.UTC
T = TypeVar("T")


async def _no_reset(_: asyncpg.Connection) -> None:
    """Replace asyncpg's per-release reset: pooled connections never carry session state."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Decoders that never raise: a value a user wrote themselves (a json field 1,500 deep, a date
    # in year 10000) must not fail the whole result, every session batched with theirs.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=msgspec.json.encode, decoder=column_values.decode_json, schema="pg_catalog", format="text"
        )
    timestamps = (column_values.encode_timestamp, column_values.decode_timestamp)
    for typ, (encode, decode) in {
        "timestamptz": timestamps,
        "timestamp": timestamps,
        "date": (column_values.encode_date, column_values.decode_date),
    }.items():
        await conn.set_type_codec(typ, encoder=encode, decoder=decode, schema="pg_catalog", format="tuple")


class Store:
    """Looks sessions up by token in Better Auth's tables.

    ``open`` never fails because Postgres is down: the pool connects on demand and the
    column catalogue is read on first use, so the gateway starts, answers 503 while
    Postgres is away, and recovers by itself.
    """

    def __init__(self, settings: Settings, mapping: Mapping) -> None:
        self._settings = settings
        self._mapping = mapping
        self._pool: asyncpg.Pool | None = None
        self._query: Query | None = None
        self._query_lock = asyncio.Lock()
        self.queries = 0  # lookups sent to Postgres, for tests and metrics

    async def open(self) -> None:
        """Create the pool (connections are made as needed)."""
        s = self._settings
        assert s.database_url is not None  # noqa: S101  (config.validate guarantees it)
        self._pool = await asyncpg.create_pool(
            s.database_url.reveal(),
            min_size=0,
            max_size=s.pool_max_size,
            reset=_no_reset,
            init=_init_connection,
            timeout=s.db_timeout_s,
            server_settings={
                "application_name": "better-auth-gateway",
                # Postgres abandons a query we have stopped waiting for.
                "statement_timeout": str(max(1, int(s.db_timeout_s * 1000))),
            },
        )

    async def close(self) -> None:
        """Close the pool, waiting at most the lookup budget for queries in flight."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._settings.db_timeout_s)
            except TimeoutError:
                pool.terminate()

    async def fetch(self, token: str) -> Session | None:
        """Return the session whose token is ``token`` joined to its user, or ``None``.

        Raises:
            StoreUnavailable: Postgres did not answer within the configured budget.
        """
        return (await self.fetch_many([token])).get(token)

    async def fetch_many(self, tokens: Sequence[str]) -> dict[str, Session]:
        """Look many tokens up in one query; tokens with no session are absent from the result.

        Raises:
            StoreUnavailable: Postgres did not answer within the configured budget.
        """
        self.queries += 1

        async def lookup(conn: asyncpg.Connection) -> dict[str, Session]:
            query = self._query or await self._load_query(conn)
            if len(tokens) == 1:
                row = await conn.fetchrow(query.sql, tokens[0])
                found = None if row is None else _row_session(query, row, 0)
                return {} if found is None else {tokens[0]: found}
            rows = await conn.fetch(query.batch_sql, list(tokens))
            return {row[0]: found for row in rows if (found := _row_session(query, row, 1)) is not None}

        return await self._bounded(lookup)

    async def public_keys(self, table: str) -> list[dict[str, Any]]:
        """The JWT plugin's public keys from its table, as its ``/jwks`` endpoint lists them.

        Each is the stored public JWK with ``kid`` (the row's id) and, where the row has them,
        ``alg`` and ``crv``. The private key column is never read.
        """
        schema = self._settings.db_schema
        name = (quote(schema) + "." if schema else "") + quote(table)
        # to_jsonb: whichever of the optional columns (alg, crv) this version's table has.
        sql = f"SELECT to_jsonb(k) - 'privateKey' AS row FROM {name} AS k"  # noqa: S608  (validated, quoted identifiers)

        async def read(conn: asyncpg.Connection) -> list[dict[str, Any]]:
            keys = []
            for record in await conn.fetch(sql):
                row = record["row"]  # jsonb: decoded by the pool's codec
                extra = {k: row[k] for k in ("alg", "crv") if row.get(k)}
                keys.append(extra | json.loads(row["publicKey"]) | {"kid": row["id"]})
            return keys

        return await self._bounded(read)

    async def ping(self) -> None:
        """Run ``SELECT 1`` and check the mapped tables; raise ``StoreUnavailable`` if either fails."""

        async def check(conn: asyncpg.Connection) -> None:
            await conn.fetchval("SELECT 1")
            if self._query is None:
                await self._load_query(conn)

        await self._bounded(check)

    async def _bounded(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, giving up after the budget whatever the link does.

        A cancelled asyncpg query waits for the server to confirm the cancel, which a dead link
        never does: instead, past the budget the connection is terminated (its socket closed) and
        the caller gets ``StoreUnavailable`` at once.
        """
        held: list[asyncpg.Connection] = []

        async def run() -> T:
            async with self._pool_or_raise().acquire() as conn:
                held.append(conn)
                try:
                    return await work(conn)
                finally:
                    held.clear()  # the work is over: from here the pool owns the connection again

        task = asyncio.ensure_future(run())
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._settings.db_timeout_s)
        except UNAVAILABLE as exc:
            if not task.done():
                for conn in held:
                    conn.terminate()
                task.add_done_callback(_retrieve)
            raise StoreUnavailable(_describe(exc)) from exc

    def pool_sizes(self) -> tuple[int, int]:
        """Connections open in the pool, and how many of them are idle."""
        pool = self._pool
        return (0, 0) if pool is None else (pool.get_size(), pool.get_idle_size())

    def _pool_or_raise(self) -> asyncpg.Pool:
        if self._pool is None:
            msg = "the Postgres pool is not open (used before open() or after close())"
            raise StoreUnavailable(msg)
        return self._pool

    async def _load_query(self, conn: asyncpg.Connection) -> Query:
        """Read the two tables' columns from the catalogue (once) and build the lookup."""
        async with self._query_lock:
            if self._query is None:
                m = self._mapping
                session_cols = [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, m.session.bare)]
                user_cols = [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, m.user.bare)]
                try:
                    self._query = build_query(m, session_cols, user_cols)
                except LookupError as exc:
                    raise SchemaMismatch(str(exc)) from exc
                log.info("session lookup: %s", self._query.sql)
                if self._query.unreturned:  # what an operator upgrading may miss: say it once
                    log.info(
                        "in the tables but not answered, as Better Auth would not return them as configured: %s "
                        "(name their plugin in GATEWAY_PLUGINS, or GATEWAY_*_ADDITIONAL_FIELDS, if it does)",
                        ", ".join(self._query.unreturned),
                    )
            return self._query


def _row_session(query: Query, row: asyncpg.Record, offset: int) -> Session | None:
    """A row that cannot be read is a miss for its token alone, never an error for the batch."""
    try:
        return to_session(query, row, offset)
    except (TypeError, ValueError, OverflowError) as exc:
        log.warning("a session row could not be read, treated as no session: %s", type(exc).__name__)
        return None


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned lookup's error is expected: don't report it as lost


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "Postgres did not answer in time"
    return f"Postgres: {type(exc).__name__}: {exc}"


def to_session(query: Query, row: asyncpg.Record, offset: int = 0) -> Session:
    """Turn a row of ``query`` into a ``Session`` with Better Auth's field names and JSON values.

    ``offset`` skips leading columns (the batched query selects the token first). Columns read
    only to decide (a role or ban Better Auth does not return) never reach the answer's fields.
    """
    raw = list(row)[offset:]
    n, at = len(query.session_fields), query.positions
    values = [json_value(v) for v in raw[: n + len(query.user_fields)]]
    role = raw[at["role"]] if "role" in at else None
    banned = raw[at["banned"]] if "banned" in at else None
    ban_expires = raw[at["banExpires"]] if "banExpires" in at else None
    return Session(
        expires_at=epoch(raw[at["expiresAt"]]),
        banned_until=0.0 if banned is not True else math.inf if ban_expires is None else epoch(ban_expires),
        session=dict(zip(query.session_fields, values[:n], strict=True)),
        user=dict(zip(query.user_fields, values[n:], strict=True)),
        role=role if isinstance(role, str) else None,
    )


def epoch(value: Any) -> float:
    """Seconds since the epoch of a timestamp column (naive values are UTC, as Better Auth writes them)."""
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_UTC)).timestamp()
    if isinstance(value, int | float):  # a bigint of milliseconds (custom schemas)
        return value / 1000
    if isinstance(value, FarTime):  # after year 9999 (or before year 1)
        return value.epoch_s
    msg = f"not a timestamp: {value!r}"
    raise TypeError(msg)


def iso_string(value: dt.datetime) -> str:
    """JavaScript's ``toISOString()``: UTC, milliseconds (truncated), ``Z``; naive values are UTC.

    msgspec writes RFC 3339 six times faster than ``isoformat``: the seconds, then six digits of
    fraction when there is one, then ``Z`` for UTC.
    """
    if value.tzinfo is not None and value.tzinfo is not _UTC:
        value = value.astimezone(_UTC)
    text: str = msgspec.to_builtins(value)
    return text[:19] + (text[19:23] if value.microsecond else ".000") + "Z"


# Column values Better Auth's JSON shows as they are; checked by exact type first (the hot case).
# A RawJSON (a document too deep to decode) is answered verbatim and never cached in Redis.
_AS_IS = frozenset({str, bool, int, float, dict, list, type(None), column_values.RawJSON})


def json_value(value: Any) -> Any:
    """Render a column value as Better Auth's JSON does (dates as JavaScript ``toISOString()``)."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if isinstance(value, dt.datetime):
        return iso_string(value)
    if isinstance(value, dt.date):  # node-postgres reads a date as a Date at midnight: see decode_date
        return value.isoformat() + "T00:00:00.000Z"
    if isinstance(value, FarTime):
        return value.iso()
    if isinstance(value, str | bool | int | float | dict | list):  # subclasses
        return value
    return str(value)  # uuid, numeric, inet: their text form
