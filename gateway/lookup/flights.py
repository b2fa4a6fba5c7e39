"""Single-flight: concurrent lookups of one token share one fetch.

The fetch runs as a task of its own, and every caller waits on it through ``asyncio.shield``: a
client going away cancels its own wait, never the fetch the others are waiting for. A caller
never joins a fetch begun before an invalidation of its token (or, once the fetch tells who the
user is, of its user): what that fetch read may be revoked, so the caller starts a fresh one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.core.sessions import Session
    from gateway.lookup.revocations import Revocations


class Loaded(NamedTuple):
    """What a lookup found, with what deciding to cache it afterwards needs.

    Not a cache entry (``tiers.Entry``) nor a decision (``sessions.Verdict``): ``session`` may be
    ``None`` (no such session), and ``invalidations`` dates the lookup, so that what it read is not
    cached if its token or user was revoked meanwhile (``Revocations.stale``).
    """

    session: Session | None
    digest: str  # sha256 of the token
    invalidations: int  # the local invalidation count when the lookup began (``Revocations``)

    @property
    def epoch(self) -> int:
        """The old name of ``invalidations`` (kept while call sites move)."""
        return self.invalidations


class _Flight(NamedTuple):
    since: int  # the invalidation count it began at
    task: asyncio.Task[Session | None]


class Flights:
    """The fetches in flight, by token: one per token, joined by whoever asks meanwhile."""

    __slots__ = ("_inflight", "_revocations")

    def __init__(self, revocations: Revocations) -> None:
        self._revocations = revocations
        self._inflight: dict[str, _Flight] = {}

    def joinable(self, token: str, digest: str) -> bool:
        """Whether ``run`` for ``token`` now would join a fetch in flight (costing nothing more)."""
        flight = self._inflight.get(token)
        return flight is not None and not self._revocations.stale(flight.since, digest, None)

    def __len__(self) -> int:
        """How many fetches are in flight."""
        return len(self._inflight)

    async def run(
        self,
        token: str,
        digest: str,
        fetch: Callable[[int], Awaitable[Session | None]],
        on_join: Callable[[], None] | None = None,
    ) -> Loaded:
        """Join the fetch of ``token`` in flight, or start ``fetch(since)`` as the one others join.

        ``since``: the invalidation count the fetch begins at (what it reads is stale if
        ``Revocations.stale(since, ...)``). ``on_join`` is called when a caller joins (for the
        metrics). The fetch's exception is every caller's; cancelling a caller cancels only its wait.
        """
        revocations = self._revocations
        flight = self._inflight.get(token)
        if flight is not None and not revocations.stale(flight.since, digest, None):
            if on_join is not None:
                on_join()
            session = await asyncio.shield(flight.task)
            if session is None or not revocations.stale(flight.since, digest, session.user_id):
                return Loaded(session, digest, flight.since)
            # Its user was revoked while it ran, maybe after this caller asked: ask again.
        since = revocations.invalidations
        task = asyncio.ensure_future(fetch(since))
        self._inflight[token] = _Flight(since, task)
        task.add_done_callback(lambda t: self._settle(token, t))
        return Loaded(await asyncio.shield(task), digest, since)

    def _settle(self, token: str, task: asyncio.Task[Session | None]) -> None:
        flight = self._inflight.get(token)
        if flight is not None and flight.task is task:
            del self._inflight[token]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away
