"""Better Auth's sliding refresh: when a session is due, and the one write that slides it.

Better Auth (``api/routes/session.ts``) slides a session on read when
``expiresAt - expiresIn + updateAge <= now``: ``expiresAt`` moves to ``now + expiresIn`` and
``updatedAt`` to ``now``, the token unchanged. The rule is ``Rule.due``: one float compare
against a constant slack, cheap enough for every cache hit.

The write (``SessionWriter``, ``gateway.postgres.refresh``) is conditional: it slides only a row
still due and not expired, so however many workers and instances see one due session at once,
one of them writes and the others read the row it wrote (``Slid.written``). Within a worker,
concurrent refreshes of one token share one write. Afterwards the caches hold the slid session:
the LRU entry is replaced (never once the token or user was heard revoked since the write began:
``Revocations.stale``), and so is the shared cache's value, under the generation read before
the write. The invalidation triggers stay silent on a slide (``expiresAt`` later, ``updatedAt``
touched): no other worker's cache is evicted, and what they hold, the old expiry, ends earlier
than the truth — it looks due to them, and their conditional write reads the slid row back.

When Postgres cannot answer, the session is answered as read, not slid (a slide missed is no
reason to refuse a valid session): counted (``refresh_unavailable``) and logged.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.core.errors import BackendUnavailable
from gateway.core.sessions import Reason
from gateway.lookup.decision import judge
from gateway.lookup.flights import Loaded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.core.sessions import Session
    from gateway.lookup.tiers import Tiers

log = logging.getLogger("gateway.lookup.refresh")
_WARN_EVERY_S = 60.0  # one warning a minute at most while slides fail


class Slid(NamedTuple):
    """What a conditional slide found: the row as it now is (``None``: gone), and whether this call wrote it."""

    session: Session | None
    written: bool


class SessionWriter(Protocol):
    """The one write the gateway makes to Better Auth's tables (``gateway.postgres.refresh``)."""

    def slide(self, token: str, now_ms: int) -> Awaitable[Slid]:
        """Slide ``token``'s row if it is still due and unexpired at ``now_ms``; return the row as it then is.

        Raises:
            StoreUnavailable: Postgres could not answer (or refused the write).
        """
        ...


class Rule:
    """Better Auth's due rule for ``expiresIn`` and ``updateAge`` (seconds)."""

    __slots__ = ("expires_in_s", "slack", "update_age_s")

    def __init__(self, expires_in_s: float, update_age_s: float) -> None:
        self.expires_in_s = expires_in_s
        self.update_age_s = update_age_s
        # expiresAt - expiresIn + updateAge <= now  <=>  expiresAt <= now + slack
        self.slack = expires_in_s - update_age_s

    def due(self, session: Session, now: float) -> bool:
        """Whether Better Auth would slide ``session`` at ``now`` (epoch seconds)."""
        return session.expires_at <= now + self.slack


class Outcome(enum.StrEnum):
    """How a refresh ended; the metrics' event names (``refresh_<outcome>``)."""

    written = "written"  # this worker slid the row
    joined = "joined"  # another writer (worker, instance, Better Auth) slid it: its row is the answer
    gone = "gone"  # the row was deleted or expired meanwhile: no session
    unavailable = "unavailable"  # Postgres could not answer: the session as read, not slid


class Refreshed(NamedTuple):
    """The session to answer with after a refresh (``None``: none), and how the refresh went."""

    session: Session | None
    outcome: Outcome


class Refresher:
    """Slides due sessions through a ``SessionWriter`` and puts the slid row in the caches."""

    def __init__(self, writer: SessionWriter, tiers: Tiers, rule: Rule, clock: Callable[[], float] = time.time) -> None:
        self.rule = rule
        self.writer = writer
        self._tiers = tiers
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[Refreshed]] = {}
        self._warned_at = -_WARN_EVERY_S

    async def refresh(self, key: str, token: str, digest: str, session: Session) -> Refreshed:
        """Slide the session ``token`` names (cached under ``key``; ``digest`` its hash), read as ``session``.

        Concurrent calls for one token share one write: the later ones answer with its result.
        """
        inflight = self._inflight.get(token)
        if inflight is not None:
            done = await asyncio.shield(inflight)
            return done if done.outcome is not Outcome.written else done._replace(outcome=Outcome.joined)
        task = asyncio.ensure_future(self._refresh(key, token, digest, session))
        self._inflight[token] = task
        task.add_done_callback(lambda _: self._inflight.pop(token, None))
        return await asyncio.shield(task)

    async def _refresh(self, key: str, token: str, digest: str, session: Session) -> Refreshed:
        tiers, events = self._tiers, self._tiers.metrics
        since = tiers.revocations.invalidations  # what the write reads is stale if revoked after this
        shared = tiers.shared
        found = await shared.get(digest) if shared is not None else None  # the generation to write back under
        now = self._clock()
        try:
            slid = await self.writer.slide(token, int(now * 1000))
        except BackendUnavailable as exc:
            events.event("refresh_unavailable")
            self._warn(exc)
            return Refreshed(session, Outcome.unavailable)
        fresh = slid.session
        if fresh is None or judge(fresh, now) is not Reason.ok:
            events.event("refresh_gone")
            tiers.l1.pop(key)
            return Refreshed(None, Outcome.gone)
        tiers.remember(key, Loaded(fresh, digest, since))  # replaces the entry (never a revoked one)
        if shared is not None and found is not None and not tiers.revocations.stale(since, digest, fresh.user_id):
            shared.put(digest, fresh, found.generation)  # refused by Redis over a tombstone
        outcome = Outcome.written if slid.written else Outcome.joined
        events.event("refresh_" + outcome)
        return Refreshed(fresh, outcome)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("a due session was answered without sliding it (sliding refresh failed): %s", exc)
