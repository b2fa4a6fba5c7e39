"""The memory of revoked tokens and users, and the count of invalidations heard; no I/O.

Two counters in the lookup mean different things, and are named apart:

- ``Revocations.invalidations`` (this module) is *local*: how many invalidations (revocations
  and flushes) this process has heard. A lookup notes it when it begins; if it has moved by the
  time the lookup ends, something was revoked meanwhile, and ``stale`` says whether it concerns
  the lookup's token or user (anyone may ``NOTIFY``: invalidations of *other* tokens cost it
  nothing).
- The shared cache's *generation* (``SharedCache.bump_generation``) is *shared* by every process
  using it: a flush bumps it, and a value written under an older one is a miss. This module
  never sees it.

Revoked token hashes and users are remembered for ``revoked_for_s`` with the invalidation count
they were heard at. A shared-cache value naming one is not trusted (``lately``): its tombstone may
still be on its way, and a copy written back by whoever can write to the shared cache must be
refused for as long as a value written before the revocation could be valid.

The memory is bounded. When it has to drop an entry still in force (a flood of notifications),
``lately`` answers yes for every token until that entry would have lapsed: lookups ask the source
of truth instead, so a flood can cost queries but never serve a revoked session. Lookups begun
before the dropped entry was heard are ``stale`` whatever their token.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from gateway.core.lru import LRU

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_ENTRIES = 100_000
_LONG_ID = 64  # a user id longer than this is remembered by its hash: anyone's NOTIFY can send 8,000 bytes


class Revocations:
    """Remembers what was revoked lately, and counts the invalidations heard.

    Args:
        clock: seconds since the epoch (the one the caches use); injected so tests never sleep.
        revoked_for_s: how long a revocation makes shared-cache values naming it untrusted.
        max_entries: the bound on the revocations remembered (see the module docstring).
    """

    __slots__ = ("_clock", "_flushed", "_for_s", "_forgot_until", "_lost", "_memory", "invalidations")

    def __init__(self, clock: Callable[[], float], revoked_for_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._for_s = revoked_for_s
        # "s:<digest>" and "u:<user id>": the invalidation count each was heard at, and until when it counts.
        self._memory: LRU[tuple[int, float]] = LRU(max_entries, clock, on_evict=self._dropped)
        self.invalidations = 0  # heard in this process: revocations and flushes (not the shared generation)
        self._flushed = 0  # the count at the last flush
        self._lost = 0  # the newest count of a revocation the memory no longer holds
        self._forgot_until = 0.0  # an entry in force was dropped: trust no shared value until then

    def token(self, digest: str) -> None:
        """Hear a token revoked (by its sha256 hex digest)."""
        self._note("s:" + digest)

    def user(self, user_id: str) -> None:
        """Hear every session of a user revoked (banned, deleted, changed)."""
        self._note(user_name(user_id))

    def flush(self) -> None:
        """Hear that anything may have been revoked (notifications were missed)."""
        self.invalidations += 1
        self._flushed = self.invalidations

    def lately(self, digest: str, user_id: str) -> bool:
        """Whether this token hash or user was heard revoked lately (``revoked_for_s``), or may have been."""
        if self._forgot_until:  # the memory dropped a revocation still in force: anything may be revoked
            if self._forgot_until > self._clock():
                return True
            self._forgot_until = 0.0
        return self._memory.get("s:" + digest) is not None or self._memory.get(user_name(user_id)) is not None

    def token_lately(self, digest: str) -> bool:
        """Whether this token hash was heard revoked lately, or may have been (``lately`` with no user yet).

        Asked before the shared cache is read: a value it holds for such a token is not trusted
        whoever its user is, so the read is skipped and the source asked at once (a revoked
        session is refused one round trip sooner).
        """
        if self._forgot_until:
            if self._forgot_until > self._clock():
                return True
            self._forgot_until = 0.0
        return self._memory.get("s:" + digest) is not None

    def stale(self, since: int, digest: str, user_id: str | None) -> bool:
        """Whether an invalidation heard after count ``since`` may concern this token hash or user.

        ``user_id``: ``None`` while the user is not known yet (a lookup still in flight).
        """
        if since == self.invalidations:
            return False
        token = self._memory.get("s:" + digest)
        user = None if user_id is None else self._memory.get(user_name(user_id))
        return (
            self._flushed > since
            or (token is not None and token[0] > since)
            or (user is not None and user[0] > since)
            or self._lost > since  # after the reads: an entry they found expired is dropped by them
        )

    def __len__(self) -> int:
        """How many revocations are remembered (lapsed ones included until they are next read)."""
        return len(self._memory)

    def _note(self, name: str) -> None:
        self.invalidations += 1
        deadline = self._clock() + self._for_s
        self._memory.put(name, (self.invalidations, deadline), deadline)

    def _dropped(self, name: str, noted: tuple[int, float]) -> None:
        """The memory let go of ``name`` (the LRU's ``on_evict``)."""
        if name in self._memory:
            return  # noted again, later
        heard_at, deadline = noted
        self._lost = max(self._lost, heard_at)
        if deadline > self._clock():  # pushed out while in force (more revocations than it holds)
            self._forgot_until = max(self._forgot_until, deadline)


def user_name(user_id: str) -> str:
    """A user's name in the memory: its id, or the id's hash when long (bounded memory)."""
    if len(user_id) <= _LONG_ID:
        return "u:" + user_id
    return "u:#" + hashlib.sha256(user_id.encode()).hexdigest()
