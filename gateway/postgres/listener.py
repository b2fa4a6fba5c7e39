"""The listener: a dedicated Postgres connection that ``LISTEN``s for revocations and evicts.

- Its own connection, never a pooled one: a pool's reset runs ``UNLISTEN *``.
- A dead connection is noticed promptly: asyncpg's termination callback, plus a query
  every ``listener_check_s`` for deaths that send nothing (a cut cable): the triggers' status.
- Notifications sent while it was away are lost, so on every (re)connect, once ``LISTEN`` is in
  place, it flushes the caches: the LRU is cleared and Redis's generation bumped.
- Every worker of every instance runs one (each has an LRU of its own): see ``admin.connection_budget``.
- It connects to the primary itself (``GATEWAY_LISTEN_DATABASE_URL``, else ``DATABASE_URL``): a
  replica hears no ``NOTIFY`` and a transaction-mode pooler drops the ``LISTEN``, so a URL that
  reaches a pooler is refused (``pooler.connect_direct``). Reconnects back off with full jitter.
- Whether the triggers (this version's) are on the tables is read on every connect and at every
  check: ``on_triggers`` hears each change (``resources`` then bounds the caches' staleness, see
  ``triggers.staleness_bound_s``), and a change flushes, since nothing was heard before it.
- Anyone who can connect to the database can ``NOTIFY`` (it takes no privilege). A forged ``s:``
  or ``u:`` only evicts; a forged ``*`` would flush every cache of every worker, as often as it is
  sent. So ``*`` (the triggers' word for a ``TRUNCATE``) is believed only with proof the sender
  cannot forge: a ``TRUNCATE`` gives the table a new file (``pg_relation_filenode``), which only a
  role allowed to truncate or rewrite the table can cause. A ``*`` with neither table's file
  changed since last seen is ignored (counted, logged once per connection); when the files can't
  be read, it is believed (forgetting is always safe). One check at a time: a flood costs one
  catalogue query after another, never a flush.
- Payloads not of the triggers' shape (``s:`` and 64 hex digits, ``u:`` and an id) are ignored:
  a forged one costs no memory of revocations. The shared tier's part of the rest goes out in
  batches (``Tiers``): a flood of forged ``s:`` costs a few pipelines, never Redis's budget.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from gateway.core.backoff import Backoff
from gateway.core.errors import ConfigError, StoreUnavailable
from gateway.postgres.connections import APPLICATION, store_errors
from gateway.postgres.pooler import connect_direct
from gateway.postgres.schema import mapping_from
from gateway.postgres.triggers import STATUS_SQL, VERSION, staleness_bound_s, status, status_args

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

    from gateway.config import Settings
    from gateway.lookup.protocols import Invalidator
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.postgres.listener")
_FIRST_RETRY_S = 0.1
_MAX_RETRY_S = 5.0
_DIGEST = re.compile(r"[0-9a-f]{64}")  # sha256 hex, as the triggers write it
_FILENODES_SQL = "SELECT pg_relation_filenode($1::regclass), pg_relation_filenode($2::regclass)"


class Listener:
    """Keeps a ``LISTEN`` connection up and turns notifications into evictions.

    ``invalidator`` hears what to evict (``lookup.tiers.Tiers``); ``on_flush`` (if given) is told
    each time everything was flushed (on every connect, and for a proven ``TRUNCATE``); ``backoff``
    spaces the reconnects (jittered, see ``core.backoff``).
    """

    def __init__(  # noqa: PLR0913  (the callbacks are keyword-only)
        self,
        settings: Settings,
        invalidator: Invalidator,
        metrics: Metrics,
        *,
        on_flush: Callable[[], None] | None = None,
        on_triggers: Callable[[bool], None] | None = None,
        backoff: Backoff | None = None,
        on_api_key: Callable[[str], None] | None = None,
    ) -> None:
        dsn = settings.listen_database_url or settings.database_url
        assert dsn is not None  # noqa: S101  (config.validate guarantees it)
        self._dsn = dsn.reveal()
        self._variable = "GATEWAY_LISTEN_DATABASE_URL" if settings.listen_database_url else "DATABASE_URL"
        self._channel = settings.channel
        self._check_s = settings.listener_check_s
        self._timeout_s = settings.db_timeout_s
        self._invalidator = invalidator
        self._metrics = metrics
        self._on_flush = on_flush or (lambda: None)
        self._on_triggers = on_triggers or (lambda _: None)
        self._on_api_key = on_api_key  # hears "k:<digest>" and "k:*" (GATEWAY_API_KEYS=on)
        self.bound_s = staleness_bound_s(settings)  # how stale, without the triggers
        self._backoff = backoff or Backoff(_FIRST_RETRY_S, _MAX_RETRY_S)
        mapping = mapping_from(settings)
        self._tables = (mapping.session.name, mapping.user.name)
        self._status_args = status_args(mapping)
        self._filenodes: tuple[object, ...] | None = None  # the tables' files when last looked at
        self._checking: asyncio.Future[Any] | None = None  # the one check of a '*' under way
        self._recheck = False  # another '*' came during it
        self._ignored_logged = False
        self._unknown_logged = False
        self._lock = asyncio.Lock()  # one query at a time on the connection
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Future[Any]] = set()
        self.connected = False
        self.triggers_installed: bool | None = None
        self.connections = 0  # (re)connections made, for tests and metrics
        self.notifications = 0
        self.flushes_ignored = 0  # '*' without a truncated table: forged

    def start(self) -> None:
        """Start listening in the background (and keep at it until ``close``)."""
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.settled()

    async def settled(self) -> None:
        """Wait until the shared tier's part of every notification heard so far is done."""
        await asyncio.gather(*self._work, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                conn = await connect_direct(self._dsn, self._timeout_s, APPLICATION + "-listener", self._variable)
            except StoreUnavailable as exc:
                await self._pause(f"listener cannot connect: {exc}")
                continue
            except ConfigError as exc:  # refused at startup too (cli): here if the URL changed hands since
                await self._pause(f"listener refused its URL: {exc}", logging.ERROR)
                continue
            try:
                with store_errors():
                    await self._serve(conn)
            except StoreUnavailable as exc:
                log.warning("listener connection lost: %s", exc)
            finally:
                self.connected = False
                conn.terminate()
            await self._pause("listener disconnected")

    async def _pause(self, reason: str, level: int = logging.WARNING) -> None:
        """Wait the next back-off delay (jittered, growing until a connection works), saying why."""
        delay = self._backoff.next()
        log.log(level, "%s; reconnecting in %.2fs", reason, delay)
        await asyncio.sleep(delay)

    async def _serve(self, conn: asyncpg.Connection) -> None:
        dead = asyncio.Event()
        conn.add_termination_listener(lambda _: dead.set())
        await conn.add_listener(self._channel, self._on_notification)
        # The tables' files before the flush: a TRUNCATE after this read is proven by a change,
        # one before it is covered by the flush.
        self._ignored_logged = self._unknown_logged = False
        self._filenodes = await self._read_filenodes(conn)
        await self._check_triggers(conn)  # before the flush: what is cached after it is bounded as it must be
        # LISTEN is in place: from here on nothing is missed, so what came before can go.
        await self._flush()
        self.connected = True
        self.connections += 1
        self._backoff.reset()
        self._metrics.event("listener_connect")
        log.info("listening on %r (connection %d)", self._channel, self.connections)
        while not dead.is_set():
            try:
                await asyncio.wait_for(dead.wait(), self._check_s)
            except TimeoutError:
                if await self._check_triggers(conn):  # also proves the link alive (raises if dead)
                    await self._flush()

    async def _flush(self) -> None:
        # Told first: the flush awaits the shared tier (a Redis round trip, up to its timeout), and
        # lookups in that window must already distrust what the flush is about (a replica's rows).
        self._on_flush()
        await self._invalidator.flush()

    async def _check_triggers(self, conn: asyncpg.Connection) -> bool:
        """Read whether this version's triggers are in place; tell ``on_triggers``; whether that changed."""
        async with self._lock:
            rows = await conn.fetch(STATUS_SQL, *self._status_args, timeout=self._timeout_s)
        installed, before = status(rows, api_keys=self._status_args[2] is not None).current, self.triggers_installed
        self.triggers_installed = installed
        if installed == before:
            return False
        self._on_triggers(installed)
        if installed:
            log.info("invalidation triggers v%d in place: revocations are heard at once", VERSION)
        else:
            log.warning(
                "no invalidation triggers v%d on the tables: a revoked session is refused within %g s "
                "(the LRU's TTL capped, Redis bypassed); `gateway serve` installs them where its role "
                "may, else run `gateway install-triggers`",
                VERSION,
                self.bound_s,
            )
        return before is not None

    def _on_notification(self, conn: asyncpg.Connection, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        kind, _, value = payload.partition(":")
        work: Awaitable[object] | None
        if kind == "s" and _DIGEST.fullmatch(value):
            work = self._invalidator.invalidate_token(value)
        elif kind == "u" and value:
            work = self._invalidator.invalidate_user(value)
        elif kind == "k" and (_DIGEST.fullmatch(value) or value == "*"):
            if self._on_api_key is not None:  # a gateway without API keys has nothing of them to evict
                self._on_api_key(value)
            return
        elif payload == "*":
            if self._checking is not None and not self._checking.done():
                self._recheck = True  # the check under way looks again when it ends
                return
            work = self._checking = asyncio.ensure_future(self._flush_if_truncated(conn))
        else:
            self._metrics.event("invalidation_ignored")
            if not self._unknown_logged:  # once per connection: anyone may send these
                self._unknown_logged = True
                log.warning("ignored a notification on %r not of the triggers' shape", self._channel)
            return
        if work is not None:  # the shared tier's part runs in the background
            future = asyncio.ensure_future(work)
            self._work.add(future)
            future.add_done_callback(self._work.discard)

    async def _flush_if_truncated(self, conn: asyncpg.Connection) -> None:
        """Flush for a ``*`` if a table was truncated since last seen; look again for a ``*`` that came meanwhile."""
        while True:
            self._recheck = False
            if await self._truncated(conn):
                await self._flush()
            if not self._recheck:
                return

    async def _truncated(self, conn: asyncpg.Connection) -> bool:
        before, self._filenodes = self._filenodes, await self._read_filenodes(conn)
        if before is None or self._filenodes is None or not all(self._filenodes) or before != self._filenodes:
            return True  # changed, or can't tell (unreadable, partitioned): believe it
        self.flushes_ignored += 1
        self._metrics.event("invalidation_flush_ignored")
        if not self._ignored_logged:
            self._ignored_logged = True
            log.warning("ignored a '*' on %r with no table truncated: not sent by the triggers", self._channel)
        return False

    async def _read_filenodes(self, conn: asyncpg.Connection) -> tuple[object, ...] | None:
        try:
            async with self._lock:
                with store_errors():
                    row = await conn.fetchrow(_FILENODES_SQL, *self._tables, timeout=self._timeout_s)
        except StoreUnavailable as exc:
            log.warning("cannot read the tables' files, so every '*' is believed: %s", exc)
            return None
        return None if row is None else tuple(row)
