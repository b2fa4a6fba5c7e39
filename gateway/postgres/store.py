"""Postgres, the source of truth: one prepared join on Better Auth's own tables, read-only.

Lookups go to ``DATABASE_URL``, or to a read replica (``GATEWAY_READ_DATABASE_URL``). A replica
lags its primary, so what it says is checked there before it can hurt:

- **A miss** may be a session created a moment ago: the tokens the replica did not find are asked
  of the primary (one query per batch, counted as ``replica_retry``) before they become a 401.
- **A hit** may be a session revoked a moment ago: the primary's ``NOTIFY`` can arrive before the
  replica replays the ``DELETE``, and a lookup begun after the notification (which the tiers'
  epoch logic lets cache) would read the row back. So a hit whose token or user was heard revoked
  lately (``doubt_with``) is read again on the primary, whose answer wins.
- **After a flush** (the listener reconnected: notifications may have been missed, and the
  replica may still show what they were about), every batch first asks its own connection whether
  its server has replayed the primary's WAL as of then, and a hit read where it has not is read
  again on the primary (``distrust_replica``): one LSN comparison per batch, on the connection
  that reads, for as long as the tiers remember a revocation. One server's answer says nothing of
  another's: the URL may be a reader endpoint whose connections reach different replicas.

So replica lag can cost a query, never refuse a fresh session nor revive a revoked one, as long
as the lag stays under the time the tiers remember a revocation (at least 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.core.errors import SchemaMismatch, StoreUnavailable
from gateway.credentials.tokens import token_hash
from gateway.postgres.jwks import keys_sql, read_keys
from gateway.postgres.pooler import LazyPool
from gateway.postgres.rows import row_session
from gateway.postgres.schema import COLUMNS_SQL, Mapping, Query, build_query

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import asyncpg

    from gateway.config import Settings
    from gateway.core.sessions import Session
    from gateway.postgres.connections import Pool

log = logging.getLogger("gateway.postgres.store")
T = TypeVar("T")
PRIMARY_POOL_MAX = 2  # with a replica: the primary only answers its misses and doubts


class Store:
    """Looks sessions up by token in Better Auth's tables.

    ``open`` never fails because Postgres is down: the pool connects on demand and the
    column catalogue is read on first use, so the gateway starts, answers 503 while
    Postgres is away, and recovers by itself.
    """

    def __init__(
        self,
        settings: Settings,
        mapping: Mapping,
        event: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._mapping = mapping
        self._event = event or (lambda _: None)
        self._read: LazyPool | None = None
        self._primary: LazyPool | None = None  # only with a replica
        self._doubt: Callable[[str, str], bool] = lambda _digest, _user: False
        self._distrusted_until = 0.0  # until then (monotonic), each read checks its server has replayed...
        self._caught_up_to: str | None = None  # ...the primary's WAL position as of the last flush
        self._distrusts = 0  # distrust_replica calls: a check begun before the latest one proves nothing
        self._query: Query | None = None
        self._query_lock = asyncio.Lock()
        self.queries = 0  # lookups sent to Postgres, for tests and metrics
        self.primary_retries = 0  # of them, replica answers checked on the primary

    async def open(self) -> None:
        """Create the pools (connections are made as needed)."""
        s = self._settings
        assert s.database_url is not None  # noqa: S101  (config.validate guarantees it)
        primary = s.database_url.reveal()
        if s.read_database_url is not None:
            self._read = self._pool(s.read_database_url.reveal(), s.pool_max_size)
            self._primary = self._pool(primary, min(PRIMARY_POOL_MAX, s.pool_max_size))
        else:
            self._read = self._pool(primary, s.pool_max_size)

    def _pool(self, dsn: str, max_size: int) -> LazyPool:
        s = self._settings
        return LazyPool(dsn, s.db_pgbouncer, max_size=max_size, timeout_s=s.db_timeout_s)

    async def close(self) -> None:
        """Close the pools, waiting at most the lookup budget for queries in flight."""
        for pool in (self._read, self._primary):
            if pool is not None:
                await pool.close()

    def doubt_with(self, doubt: Callable[[str, str], bool]) -> None:
        """Have replica hits whose ``doubt(token_digest, user_id)`` is true read again on the primary."""
        self._doubt = doubt

    def distrust_replica(self, for_s: float = 10.0) -> None:
        """For ``for_s``, read a replica hit again on the primary unless its server showed the primary's WAL as of now.

        Called at each flush: revocations whose notifications were missed are committed by now.
        ``for_s``: how long the tiers remember a revocation, the lag the replica is assumed to keep under.
        """
        self._distrusted_until, self._caught_up_to = time.monotonic() + for_s, None
        self._distrusts += 1

    async def fetch(self, token: str) -> Session | None:
        """Return the session whose token is ``token`` joined to its user, or ``None``.

        Raises:
            StoreUnavailable: Postgres did not answer within the configured budget.
        """
        return (await self.fetch_many([token])).get(token)

    async def fetch_many(self, tokens: Sequence[str]) -> dict[str, Session]:
        """Look many tokens up in one query; tokens with no session are absent from the result.

        Raises:
            StoreUnavailable: Postgres (the replica, or the primary when asked) did not answer in time.
        """
        self.queries += 1
        if self._primary is None:
            return (await self._lookup(self._read, tokens))[0]
        found, replayed = await self._lookup(self._read, tokens, await self._replay_target())
        missed = [token for token in tokens if token not in found]
        doubted = [token for token, session in found.items() if not replayed or self._doubted(token, session)]
        if not missed and not doubted:
            return found
        self.primary_retries += 1
        self._event("replica_retry")
        fresh, _ = await self._lookup(self._primary, missed + doubted)
        for token in doubted:  # the primary's answer wins, absent or not
            del found[token]
        if any(token in fresh for token in missed):
            self._event("replica_lag_hidden")  # a session the replica did not have yet
        return found | fresh

    def _doubted(self, token: str, session: Session) -> bool:
        return self._doubt(token_hash(token), session.user_id)

    async def _replay_target(self) -> str | None:
        """The primary's WAL position as of the last flush, while replica reads must show it; else ``None``."""
        while self._distrusted_until > time.monotonic():
            distrusts, target = self._distrusts, self._caught_up_to
            if target is None:
                target = await (await _get(self._primary)).run(_wal_position)
            if distrusts == self._distrusts:  # else read before a newer flush: not as of it
                self._caught_up_to = target
                return target
        return None

    async def _lookup(
        self, pool: LazyPool | None, tokens: Sequence[str], target: str | None = None
    ) -> tuple[dict[str, Session], bool]:
        """The sessions found, and whether the server had replayed ``target`` first (asked on the same connection)."""

        async def lookup(conn: asyncpg.Connection) -> tuple[dict[str, Session], bool]:
            # Before the read, on its connection (in its transaction through a pooler): the read
            # then shows at least what this server had replayed.
            replayed = target is None or await _replayed(conn, target)
            query = self._query or await self._load_query(conn)
            if len(tokens) == 1:
                row = await conn.fetchrow(query.sql, tokens[0])
                found = None if row is None else row_session(query, row, 0)
                return ({} if found is None else {tokens[0]: found}), replayed
            rows = await conn.fetch(query.batch_sql, list(tokens))
            return {row[0]: found for row in rows if (found := row_session(query, row, 1)) is not None}, replayed

        return await (await _get(pool)).run(lookup)

    async def on_primary(
        self, work: Callable[[asyncpg.Connection, Query], Awaitable[T]], *, read_only: bool = True
    ) -> T:
        """Run ``work`` with the lookup's query on the primary (``DATABASE_URL``), never a replica.

        ``read_only=False``: a write (the sliding refresh's), also through a transaction-mode pooler.

        Raises:
            StoreUnavailable: Postgres did not answer within the budget, or refused the work.
        """

        async def run(conn: asyncpg.Connection) -> T:
            return await work(conn, self._query or await self._load_query(conn))

        return await (await _get(self._primary or self._read)).run(run, read_only=read_only)

    async def public_keys(self, table: str) -> list[dict[str, Any]]:
        """The JWT plugin's public keys (``jwks.read_keys``), from the primary: a key made a moment ago counts.

        Raises:
            StoreUnavailable: Postgres did not answer within the configured budget.
        """
        sql = keys_sql(self._settings.db_schema, table)
        pool = await _get(self._primary or self._read)
        return await pool.run(lambda conn: read_keys(conn, sql))

    async def run_on_primary(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a connection to the primary (the API key lookup: a key made a moment ago counts).

        Raises:
            StoreUnavailable: Postgres did not answer within the configured budget.
        """
        return await (await _get(self._primary or self._read)).run(fn)

    async def ping(self) -> None:
        """Run ``SELECT 1`` (on the replica and the primary) and check the mapped tables.

        Raises:
            StoreUnavailable: either server did not answer, or the tables are not as mapped.
        """

        async def check(conn: asyncpg.Connection) -> None:
            await conn.fetchval("SELECT 1")
            if self._query is None:
                await self._load_query(conn)

        for pool in (self._read, self._primary):
            if pool is not None:
                await (await _get(pool)).run(check)

    def pool_sizes(self) -> tuple[int, int]:
        """Connections open in the pools, and how many of them are idle."""
        sizes = [pool.sizes() for pool in (self._read, self._primary) if pool is not None]
        return sum(s[0] for s in sizes), sum(s[1] for s in sizes)

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


async def _wal_position(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def _replayed(conn: asyncpg.Connection, lsn: str) -> bool:
    # NULL when the server is no standby (promoted, or the primary itself): nothing to wait for.
    sql = "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)"
    return bool(await conn.fetchval(sql, lsn))


async def _get(pool: LazyPool | None) -> Pool:
    if pool is None:
        msg = "the Postgres pool is not open (used before open() or after close())"
        raise StoreUnavailable(msg)
    return await pool.get()
