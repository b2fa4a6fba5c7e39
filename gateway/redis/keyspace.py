"""The keyspace listener: Better Auth's revocations in its secondary storage, heard as they happen.

Redis publishes keyspace notifications when ``notify-keyspace-events`` has ``K``, ``g``, ``$``
and ``x`` (or ``KA``): a session key deleted, expired or rewritten evicts its token; a
``revoked-sessions-before-<userId>`` key set evicts the user. Notifications are fire-and-forget,
so on every (re)subscribe the caches are flushed: what changed while nobody listened is unknown.
A lost subscription is retried with a jittered, capped exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random as _random
from typing import TYPE_CHECKING

from gateway.core.backoff import Backoff, jitter
from gateway.core.errors import StoreUnavailable
from gateway.redis.client import answering
from gateway.redis.secondary_storage import ACTIVE_SESSIONS, REVOKED_BEFORE, text

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.lookup.protocols import Invalidator
    from gateway.redis.secondary_storage import SecondaryStorage

log = logging.getLogger("gateway.redis.keyspace")

# The keyspace events that end or change what a session key says.
_EVICTING = frozenset({"del", "expired", "evicted", "set", "rename_from", "unlink"})
_MAX_BACKOFF_S = 5.0  # while it is away, revocations wait for the LRU's TTL: retry often


class KeyspaceListener:
    """Turns keyspace notifications of Better Auth's keys into evictions (``start``/``close``/``connected``).

    ``event`` counts each (re)subscribe as ``listener_connect``, for the metrics; ``random`` is the
    back-off's jitter (``random.random`` unless a test injects its own).
    """

    def __init__(
        self,
        storage: SecondaryStorage,
        invalidator: Invalidator,
        backoff_s: float,
        *,
        event: Callable[[str], None] | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._client = storage.client
        self._prefix = storage.prefix
        self._invalidator = invalidator
        db = storage.client.connection_pool.connection_kwargs.get("db", 0)
        self._pattern = f"__keyspace@{db}__:{_glob_escape(storage.prefix)}*"
        self._channel_head = len(f"__keyspace@{db}__:")
        self._backoff = Backoff(backoff_s, _MAX_BACKOFF_S, jitter(random))
        self._event = event or (lambda _: None)
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connections = 0  # subscriptions made, for tests

    def start(self) -> None:
        """Listen in the background until ``close``."""
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with answering(None, StoreUnavailable):
                    await self._listen()
            except StoreUnavailable as exc:
                self.connected = False
                delay = self._backoff.next()
                log.warning("keyspace notifications lost (%s): retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.psubscribe(self._pattern)
            await self._invalidator.flush()  # what changed while nobody listened is unknown
            self.connected = True
            self.connections += 1
            self._event("listener_connect")
            self._backoff.reset()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self._handle(text(message["channel"]), text(message["data"]))
        finally:
            self.connected = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _handle(self, channel: str, event: str) -> None:
        if event not in _EVICTING:
            return
        key = channel[self._channel_head + len(self._prefix) :]
        if key.startswith(REVOKED_BEFORE):
            self._invalidator.invalidate_user(key[len(REVOKED_BEFORE) :])
        elif not key.startswith(ACTIVE_SESSIONS):
            self._invalidator.invalidate_token(hashlib.sha256(key.encode()).hexdigest())


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
