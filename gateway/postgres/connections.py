"""Connections to Postgres: the pool, single connections, and the time budget on both.

Every failure of Postgres to answer leaves this package as the core's ``StoreUnavailable``, with
the driver's exception chained: callers catch the core's error, never asyncpg's.

Two ways to reach Postgres (``pooler.py`` decides which):

- **Directly**: the statement timeout is a startup parameter,
  and asyncpg keeps its prepared statements.
- **Through PgBouncer in transaction mode**: PgBouncer refuses startup parameters it does not know
  (``statement_timeout`` among them), and before 1.21 keeps no prepared statement past a
  transaction. So each lookup runs in a transaction of its own with the timeout set for it alone
  (``SET LOCAL``, in the same round trip as ``BEGIN``), and asyncpg's statement cache is off (it
  then sends each statement's parse with its execution, so both reach the same server
  connection), unless the operator says PgBouncer keeps prepared statements (1.21+ with
  ``max_prepared_statements``: ``GATEWAY_DB_PGBOUNCER=prepared``).

The pool skips asyncpg's reset on release: a second round trip per lookup, and only needed when
connections carry session state. Ours never do: the gateway runs nothing but SELECTs on pooled
connections (LISTEN has a connection of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import asyncpg
import msgspec

from gateway.core import column_values
from gateway.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

# What "Postgres could not answer" looks like from asyncpg, as opposed to a bug in the gateway.
# A host name the IDNA codec refuses (a label over 63 characters) raises UnicodeError, not a
# socket error, before any resolver is asked: unreachable all the same.
_FAILURES = (OSError, TimeoutError, UnicodeError, asyncpg.PostgresError, asyncpg.InterfaceError)
APPLICATION = "better-auth-gateway"
T = TypeVar("T")


class Route(NamedTuple):
    """How to talk to one server: directly, or through a transaction-mode pooler."""

    pooled: bool  # through PgBouncer in transaction mode
    prepared: bool  # asyncpg may keep prepared statements


DIRECT = Route(pooled=False, prepared=True)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn asyncpg's failures (and timeouts) into ``StoreUnavailable``, the cause chained."""
    try:
        yield
    except _FAILURES as exc:
        raise StoreUnavailable(describe(exc)) from exc


def describe(exc: BaseException) -> str:
    """A one-line account of a failure, for logs and ``/readyz``."""
    if isinstance(exc, TimeoutError):
        return "Postgres did not answer in time"
    return f"Postgres: {type(exc).__name__}: {exc}"


def timeout_ms(timeout_s: float) -> str:
    """Postgres's ``statement_timeout`` for a budget in seconds (at least 1 ms: 0 means none)."""
    return str(max(1, int(timeout_s * 1000)))


async def connect(dsn: str, timeout_s: float, settings: dict[str, str] | None = None) -> asyncpg.Connection:
    """One connection of its own (the listener's, the command line's).

    Raises:
        StoreUnavailable: Postgres could not be reached in ``timeout_s``.
    """
    with store_errors():
        return await asyncpg.connect(dsn, timeout=timeout_s, server_settings=settings)


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


class Pool:
    """An asyncpg pool whose every use is bounded in time, whatever the link does.

    Connections are made on demand (``min_size=0``): creating the pool never fails because
    Postgres is away.
    """

    def __init__(self, dsn: str, *, max_size: int, timeout_s: float, route: Route) -> None:
        self._dsn, self._max_size, self._timeout_s, self.route = dsn, max_size, timeout_s, route
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool (no connection is made yet)."""
        settings = {"application_name": APPLICATION}
        if not self.route.pooled:  # Postgres abandons a query we have stopped waiting for
            settings["statement_timeout"] = timeout_ms(self._timeout_s)
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._max_size,
            reset=_no_reset,
            init=_init_connection,
            timeout=self._timeout_s,
            server_settings=settings,
            statement_cache_size=100 if self.route.prepared else 0,
        )

    async def close(self) -> None:
        """Close the pool, waiting at most the budget for queries in flight."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout_s)
            except TimeoutError:
                pool.terminate()

    def sizes(self) -> tuple[int, int]:
        """Connections open, and how many of them are idle."""
        pool = self._pool
        return (0, 0) if pool is None else (pool.get_size(), pool.get_idle_size())

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, read_only: bool = True) -> T:
        """Run ``work`` on a pooled connection within the budget (through a pooler: read-only unless not ``read_only``).

        A cancelled asyncpg query waits for the server to confirm the cancel, which a dead link
        never does: instead, past the budget the connection is terminated (its socket closed) and
        the caller gets ``StoreUnavailable`` at once.

        Raises:
            StoreUnavailable: Postgres did not answer within the budget.
        """
        pool = self._pool
        if pool is None:
            msg = "the Postgres pool is not open (used before open() or after close())"
            raise StoreUnavailable(msg)
        held: list[asyncpg.Connection] = []
        step = self._in_transaction(work, read_only=read_only) if self.route.pooled else work

        async def run() -> T:
            async with pool.acquire() as conn:
                held.append(conn)
                try:
                    return await step(conn)
                finally:
                    held.clear()  # the work is over: from here the pool owns the connection again

        task = asyncio.ensure_future(run())
        try:
            with store_errors():
                return await asyncio.wait_for(asyncio.shield(task), self._timeout_s)
        except StoreUnavailable:
            if not task.done():
                for conn in held:
                    conn.terminate()
                task.add_done_callback(_retrieve)
            raise

    def _in_transaction(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, read_only: bool = True
    ) -> Callable[[asyncpg.Connection], Awaitable[T]]:
        """``work`` in a transaction of its own, with the statement timeout set for it alone."""
        mode = " READ ONLY" if read_only else ""  # the sliding refresh's write alone is not
        begin = f"BEGIN{mode}; SET LOCAL statement_timeout = {timeout_ms(self._timeout_s)}"

        async def transaction(conn: asyncpg.Connection) -> T:
            await conn.execute(begin)
            try:
                result = await work(conn)
            except BaseException:
                await _roll_back(conn)
                raise
            await conn.execute("COMMIT")
            return result

        return transaction


async def _roll_back(conn: asyncpg.Connection) -> None:
    """End a failed transaction; a connection that can't is closed, never handed back mid-transaction."""
    if conn.is_closed():
        return
    try:
        await conn.execute("ROLLBACK")
    except _FAILURES:
        conn.terminate()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned lookup's error is expected: don't report it as lost
