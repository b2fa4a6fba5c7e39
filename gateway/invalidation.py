"""The listener: a dedicated Postgres connection that ``LISTEN``s for revocations and evicts.

- Its own connection, never a pooled one: a pool's reset runs ``UNLISTEN *``.
- A dead connection is noticed promptly: asyncpg's termination callback, plus a ``SELECT 1``
  every ``listener_check_s`` for deaths that send nothing (a cut cable).
- Notifications sent while it was away are lost, so on every (re)connect, once ``LISTEN`` is in
  place, it flushes the caches: the LRU is cleared and Redis's generation bumped.
- Every worker of every instance runs one (each has an LRU of its own): the Postgres connection
  budget is ``instances * workers * (GATEWAY_POOL_MAX_SIZE + 1)``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.store import UNAVAILABLE
from gateway.triggers import INSTALLED_SQL, installed_names

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from gateway.config import Settings
    from gateway.tiers import Tiers

log = logging.getLogger("gateway.invalidation")
_FIRST_RETRY_S = 0.1
_MAX_RETRY_S = 5.0


class Listener:
    """Keeps a ``LISTEN`` connection up and turns notifications into evictions."""

    def __init__(self, settings: Settings, tiers: Tiers) -> None:
        assert settings.database_url is not None  # noqa: S101  (config.validate guarantees it)
        self._dsn = settings.database_url.reveal()
        self._channel = settings.channel
        self._check_s = settings.listener_check_s
        self._timeout_s = settings.db_timeout_s
        self._tiers = tiers
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Future[Any]] = set()
        self.connected = False
        self.triggers_installed: bool | None = None
        self.connections = 0  # (re)connections made, for tests and metrics
        self.notifications = 0

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
        delay = _FIRST_RETRY_S
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._timeout_s,
                    server_settings={"application_name": "better-auth-gateway-listener"},
                )
            except UNAVAILABLE as exc:
                log.warning("listener cannot connect (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_S)
                continue
            delay = _FIRST_RETRY_S
            try:
                await self._serve(conn)
            except UNAVAILABLE as exc:
                log.warning("listener connection lost: %s", exc)
            finally:
                self.connected = False
                conn.terminate()
            log.warning("listener disconnected; reconnecting")
            await asyncio.sleep(_FIRST_RETRY_S)

    async def _serve(self, conn: asyncpg.Connection) -> None:
        dead = asyncio.Event()
        conn.add_termination_listener(lambda _: dead.set())
        await conn.add_listener(self._channel, self._on_notification)
        # LISTEN is in place: from here on nothing is missed, so what came before can go.
        await self._tiers.flush()
        await self._check_triggers(conn)
        self.connected = True
        self.connections += 1
        self._tiers.metrics.event("listener_connect")
        log.info("listening on %r (connection %d)", self._channel, self.connections)
        while not dead.is_set():
            try:
                await asyncio.wait_for(dead.wait(), self._check_s)
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=self._timeout_s)  # raises if the link is dead

    async def _check_triggers(self, conn: asyncpg.Connection) -> None:
        found = await conn.fetchval(INSTALLED_SQL, installed_names(), timeout=self._timeout_s)
        self.triggers_installed = found > 0
        if not self.triggers_installed:
            log.warning(
                "no invalidation triggers found: revoked sessions stay cached until their TTL "
                "(run `gateway install-triggers`)"
            )

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        kind, _, value = payload.partition(":")
        work: Awaitable[object] | None
        if kind == "s":
            work = self._tiers.invalidate_token(value)
        elif kind == "u":
            work = self._tiers.invalidate_user(value)
        elif payload == "*":
            work = self._tiers.flush()
        else:
            log.warning("ignored an unknown notification on %r", self._channel)
            return
        if work is not None:  # the shared tier's part runs in the background
            future = asyncio.ensure_future(work)
            self._work.add(future)
            future.add_done_callback(self._work.discard)
