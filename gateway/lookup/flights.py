"""Single-flight: concurrent lookups of one token share one fetch.

The fetch is a future of its own (``fetch(since)`` returns one: the tiers chain their reads by
callbacks, so a lookup costs no task; a coroutine gets a task of its own), and every caller,
the one that started it included, waits on a future of its own relayed from it: a client going
away cancels its own wait, never the fetch the others are waiting for. (``asyncio.shield`` does
the same with a task per fetch and more callbacks: about 4 µs a lookup, a sixth of a shared-cache
hit's CPU, measured in ``benchmarks/results/tiers-20261130.md``.) A caller never joins a fetch
begun before an invalidation of its token (or, once the fetch tells who the user is, of its
user): what that fetch read may be revoked, so the caller starts a fresh one.
"""

from __future__ import annotations

import asyncio
import functools
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
    fetched: asyncio.Future[Session | None]


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
            session = await _waiter(flight.fetched)
            if session is None or not revocations.stale(flight.since, digest, session.user_id):
                return Loaded(session, digest, flight.since)
            # Its user was revoked while it ran, maybe after this caller asked: ask again.
        since = revocations.invalidations
        fetching = fetch(since)
        # A future as it is (the tiers' fetch: no task); a coroutine in a task of its own.
        fetched = fetching if isinstance(fetching, asyncio.Future) else asyncio.ensure_future(fetching)
        if fetched.done():  # answered at once: nothing to share, nothing to settle
            return Loaded(fetched.result(), digest, since)
        self._inflight[token] = _Flight(since, fetched)
        fetched.add_done_callback(functools.partial(self._settle, token))
        return Loaded(await _waiter(fetched), digest, since)

    def _settle(self, token: str, fetched: asyncio.Future[Session | None]) -> None:
        flight = self._inflight.get(token)
        if flight is not None and flight.fetched is fetched:
            del self._inflight[token]
        if not fetched.cancelled():
            fetched.exception()  # retrieved here too, in case every waiter went away


def _waiter(fetched: asyncio.Future[Session | None]) -> asyncio.Future[Session | None]:
    """A future of one caller's own that gets ``fetched``'s outcome: cancelling it leaves ``fetched`` be."""
    waiter: asyncio.Future[Session | None] = fetched.get_loop().create_future()
    fetched.add_done_callback(functools.partial(_relay, waiter))
    return waiter


def _relay(waiter: asyncio.Future[Session | None], fetched: asyncio.Future[Session | None]) -> None:
    if waiter.done():  # its caller went away
        return
    if fetched.cancelled():  # shutting down (the source's batches are cancelled): nobody may wait forever
        waiter.cancel()
        return
    error = fetched.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(fetched.result())
