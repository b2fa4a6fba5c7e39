"""The cache tiers in front of the source of truth: the in-process LRU, then the store.

Concurrent misses for one token share one lookup (single-flight), run as a task of its own so
that a client going away cannot cancel it for the others.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from gateway.lru import LRU
    from gateway.sessions import Session


class SessionSource(Protocol):
    """Where sessions come from on a cache miss (``store.Store`` satisfies it)."""

    def fetch(self, token: str) -> Awaitable[Session | None]:
        """Return the session for ``token`` or ``None``; raise ``BackendUnavailable`` on failure."""
        ...


class Entry:
    """A cached valid session; ``rendered`` is a memo for the HTTP adapter's response headers."""

    __slots__ = ("rendered", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rendered: list[tuple[str, str]] | None = None


class Tiers:
    """Looks a session up in the LRU, then in the source, filling the LRU on the way back."""

    def __init__(self, l1: LRU[Entry], source: SessionSource, ttl_s: float) -> None:
        self.l1 = l1
        self._source = source
        self._ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Task[Session | None]] = {}

    def cached(self, key: str) -> Entry | None:
        """The hit path: the live LRU entry for a credential key, with no I/O."""
        return self.l1.get(key)

    async def load(self, token: str) -> Session | None:
        """Fetch ``token`` from the source, sharing one fetch among concurrent callers."""
        task = self._inflight.get(token)
        if task is None:
            task = asyncio.ensure_future(self._source.fetch(token))
            self._inflight[token] = task
            task.add_done_callback(lambda t: self._settle(token, t))
        return await asyncio.shield(task)

    def _settle(self, token: str, task: asyncio.Task[Session | None]) -> None:
        if self._inflight.get(token) is task:
            del self._inflight[token]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away

    def remember(self, key: str, session: Session) -> None:
        """Cache a valid session under a credential key, never past its ``expiresAt``."""
        deadline = min(self.l1.clock() + self._ttl_s, session.expires_at)
        self.l1.put(key, Entry(session), deadline)
