"""The connection pooler (PgBouncer) that may sit between the gateway and Postgres, and how to tell.

The signal: a custom setting given at startup (``gateway.direct``). Postgres accepts any dotted
name as a startup parameter and reports it back; PgBouncer refuses a startup parameter it does not
know ("unsupported startup parameter") or, when told to ignore it, drops it, so it never reaches
the server. Either way the answer does not depend on the pool mode, the version, or what the
server says about itself.

- Lookups through a pooler run one transaction each with the timeout set inside it
  (``connections.Pool``); ``GATEWAY_DB_PGBOUNCER`` says whether to look (``auto``) or not.
- ``LISTEN`` through a transaction-mode pooler hears nothing (the server connection that ran it
  goes back to the pool at once), so the listener's URL must reach Postgres itself: a pooler there
  is a configuration error, said at startup.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import asyncpg

from gateway.core.errors import ConfigError, StoreUnavailable
from gateway.postgres.connections import APPLICATION, DIRECT, Pool, Route, connect, store_errors

_PROBE = "gateway.direct"
PgBouncerMode = Literal["auto", "true", "false", "prepared"]
_ROUTES: dict[str, Route] = {
    "false": DIRECT,
    "true": Route(pooled=True, prepared=False),  # PgBouncer before 1.21: no prepared statements
    "prepared": Route(pooled=True, prepared=True),  # 1.21+ with max_prepared_statements > 0
}


async def behind_pooler(dsn: str, timeout_s: float) -> bool:
    """Whether ``dsn`` reaches a pooler rather than Postgres itself.

    Raises:
        StoreUnavailable: nothing answered in ``timeout_s``.
    """
    try:
        conn = await connect_direct(dsn, timeout_s, APPLICATION + "-probe")
    except ConfigError:
        return True
    conn.terminate()
    return False


async def connect_direct(
    dsn: str, timeout_s: float, application_name: str, variable: str = "the URL"
) -> asyncpg.Connection:
    """A connection to Postgres itself, never through a pooler.

    Raises:
        ConfigError: ``dsn`` reaches a pooler (``listen_through_pooler`` says what to do).
        StoreUnavailable: nothing answered in ``timeout_s``.
    """
    try:
        conn = await connect(dsn, timeout_s, {"application_name": application_name, _PROBE: "on"})
    except StoreUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, asyncpg.PostgresError) and "unsupported startup parameter" in str(cause):
            raise ConfigError([listen_through_pooler(variable)]) from exc
        raise
    # A link lost past the login leaves BEGIN, or the ROLLBACK after a timed-out query, waiting
    # for ever (asyncpg waits for the cancel's answer): past the budget the socket is closed.
    watchdog = asyncio.get_running_loop().call_later(timeout_s, conn.terminate)
    try:
        with store_errors():
            # In a transaction: through a transaction-mode pooler, the statement's parse and
            # execute then reach the same server connection.
            async with conn.transaction():
                value = await conn.fetchval(f"SELECT current_setting('{_PROBE}', true)", timeout=timeout_s)
    except BaseException:
        conn.terminate()
        raise
    finally:
        watchdog.cancel()
    if value != "on":  # the pooler dropped the setting (ignore_startup_parameters)
        conn.terminate()
        raise ConfigError([listen_through_pooler(variable)])
    return conn


async def require_direct(dsn: str, timeout_s: float, variable: str) -> None:
    """Refuse a pooler where ``LISTEN`` must run; do nothing if nothing answers (the listener retries).

    Raises:
        ConfigError: ``dsn`` reaches a pooler, naming ``variable`` and the fix.
    """
    try:
        pooled = await behind_pooler(dsn, timeout_s)
    except StoreUnavailable:
        return
    if pooled:
        raise ConfigError([listen_through_pooler(variable)])


def listen_through_pooler(variable: str) -> str:
    """The message for a ``LISTEN`` URL that reaches a pooler."""
    return (
        f"{variable} reaches a connection pooler (PgBouncer), not Postgres itself: LISTEN through it hears "
        "no revocation. Point GATEWAY_LISTEN_DATABASE_URL at the primary directly (the pooler can stay "
        "in DATABASE_URL / GATEWAY_READ_DATABASE_URL for lookups)"
    )


class LazyPool:
    """A ``Pool`` whose route is found on first use, so that opening never needs Postgres up."""

    def __init__(self, dsn: str, mode: PgBouncerMode, *, max_size: int, timeout_s: float) -> None:
        self._dsn, self._mode, self._max_size, self._timeout_s = dsn, mode, max_size, timeout_s
        self._pool: Pool | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def get(self) -> Pool:
        """The pool, made on first call (probing for a pooler if the mode is ``auto``).

        Raises:
            StoreUnavailable: the probe found nothing to answer, or the pool is closed.
        """
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._closed:
                msg = "the Postgres pool is not open (used before open() or after close())"
                raise StoreUnavailable(msg)
            if self._pool is None:
                route = _ROUTES.get(self._mode)
                if route is None:
                    pooled = await behind_pooler(self._dsn, self._timeout_s)
                    route = _ROUTES["true" if pooled else "false"]
                pool = Pool(self._dsn, max_size=self._max_size, timeout_s=self._timeout_s, route=route)
                await pool.open()
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        """Close the pool if it was made; later uses raise ``StoreUnavailable``."""
        async with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def sizes(self) -> tuple[int, int]:
        """Connections open, and how many are idle."""
        return (0, 0) if self._pool is None else self._pool.sizes()

    @property
    def route(self) -> Route | None:
        """How the pool talks to its server, once known."""
        return None if self._pool is None else self._pool.route
