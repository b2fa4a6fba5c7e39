"""One token's fetch through the tiers below the LRU: the shared cache's session, else the source's.

A fetch is a future chained by callbacks (the shared cache's read and the source's batch are
futures already), not a coroutine: it needs no task, so a lookup that ``flights`` shares costs
no task step and no ``shield`` (~4 µs of a shared-cache hit's ~25, measured in
``benchmarks/results/tiers-20261130.md``). Each step runs when the read before it is answered,
so what it checks (revocations heard, a flush under way) is as of then.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

from gateway.core.errors import BackendUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from gateway.core.sessions import Session
    from gateway.lookup.batching import Batcher
    from gateway.lookup.protocols import SharedCache, SharedRead
    from gateway.lookup.revocations import Revocations
    from gateway.telemetry.metrics import Metrics

    Fetched = asyncio.Future[Session | None]


class Fetcher:
    """Fetches tokens: the shared cache first (unless ``skipped()``), the source on a miss, filling the cache.

    ``skipped``: the shared cache is bypassed or being flushed (``Tiers``), asked before a read;
    ``flushing``: a flush is under way, asked again once the read is answered.
    """

    __slots__ = ("_flushing", "_metrics", "_revocations", "_shared", "_skipped", "_source")

    def __init__(  # noqa: PLR0913  (the tiers' parts, explicitly)
        self,
        *,
        source: Batcher[str, Session],
        shared: SharedCache | None,
        revocations: Revocations,
        metrics: Metrics,
        skipped: Callable[[], bool],
        flushing: Callable[[], bool],
    ) -> None:
        self._source, self._shared, self._revocations, self._metrics = source, shared, revocations, metrics
        self._skipped, self._flushing = skipped, flushing

    def __call__(self, token: str, digest: str, since: int) -> Fetched:
        """The session of ``token`` (hash ``digest``) as the tiers find it, for a lookup begun at count ``since``.

        The future's exception is the source's (``BackendUnavailable``) when the shared cache had no session.
        """
        shared = self._shared
        # A token revoked lately: its shared value would not be trusted, so don't wait for it
        # (a revoked session is refused one round trip sooner on every worker).
        if shared is None or self._skipped() or self._revocations.token_lately(digest):
            fetched: Fetched = asyncio.get_running_loop().create_future()
            self._from_source(token, digest, since, None, fetched)
            return fetched
        reading = shared.get(digest)
        # The Redis tier's is a future already; a coroutine (tracing, tests) gets a task.
        read = reading if isinstance(reading, asyncio.Future) else asyncio.ensure_future(reading)
        fetched = read.get_loop().create_future()
        read.add_done_callback(functools.partial(self._after_shared, token, digest, since, fetched))
        return fetched

    def _after_shared(
        self, token: str, digest: str, since: int, fetched: Fetched, read: asyncio.Future[SharedRead | None]
    ) -> None:
        try:
            found = None if read.cancelled() else read.result()  # cancelled: the shared tier is closing
        except Exception as exc:  # noqa: BLE001  (a shared cache never raises; if one did, it is every waiter's)
            fetched.set_exception(exc)
            return
        if found is None:
            self._metrics.lookup("redis", "error")
        elif (
            found.session is not None
            and not self._flushing()
            and not self._revocations.lately(digest, found.session.user_id)
        ):
            self._metrics.lookup("redis", "hit")
            fetched.set_result(found.session)
            return
        else:
            self._metrics.lookup("redis", "miss")
        self._from_source(token, digest, since, found, fetched)

    def _from_source(self, token: str, digest: str, since: int, found: SharedRead | None, fetched: Fetched) -> None:
        asked = self._source.get(token)
        asked.add_done_callback(functools.partial(self._after_source, digest, since, found, fetched))

    def _after_source(
        self, digest: str, since: int, found: SharedRead | None, fetched: Fetched, asked: Fetched
    ) -> None:
        if asked.cancelled():  # shutting down (``Batcher``): nobody may wait forever
            fetched.cancel()
            return
        error = asked.exception()
        if error is not None:
            if isinstance(error, BackendUnavailable):
                self._metrics.lookup("postgres", "error")
            fetched.set_exception(error)
            return
        session = asked.result()
        self._metrics.lookup("postgres", "miss" if session is None else "hit")
        fetched.set_result(session)  # first: a put that failed must not leave the waiters waiting
        # Not after an invalidation heard since the lookup began: what the source said may be
        # stale (the shared cache also refuses writes over a token's or user's tombstone).
        shared = self._shared
        if (
            session is not None
            and found is not None
            and shared is not None
            and not self._revocations.stale(since, digest, session.user_id)
        ):
            shared.put(digest, session, found.generation)


def timed(
    bulk: Callable[[Sequence[str]], Awaitable[Mapping[str, Session]]], observe: Callable[[float], None]
) -> Callable[[Sequence[str]], Awaitable[Mapping[str, Session]]]:
    """``bulk``, with the time of each call given to ``observe`` (the backend latency histogram)."""

    async def timed_bulk(tokens: Sequence[str]) -> Mapping[str, Session]:
        started = time.perf_counter()
        try:
            return await bulk(tokens)
        finally:
            observe(time.perf_counter() - started)

    return timed_bulk
