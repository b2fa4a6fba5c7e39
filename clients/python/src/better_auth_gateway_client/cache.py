"""An optional, small cache of the gateway's positive answers, for services that ask often.

Off by default. With ``cache_ttl_s`` a valid session is remembered that long (never past its
``expiresAt``), so a session revoked meanwhile is still accepted by this process for up to
``cache_ttl_s``: the gateway itself evicts on revocation within milliseconds, this cache cannot
hear of it. Keep the TTL short (seconds). Only positive answers are kept: an answer of no session
is always asked again (it may be a sign-in a replica had not seen yet), and an error never is kept.

Keys are SHA-256 digests of what was sent (``protocol.cache_key``): no credential is held or
printed as it is. Bounded by ``size`` entries, least recently used out first; safe across threads.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from better_auth_gateway_client.identity import Identity


class IdentityCache:
    """``key -> Identity`` for ``ttl_s`` seconds of ``clock`` (monotonic), at most ``size`` entries."""

    def __init__(
        self,
        ttl_s: float,
        size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if ttl_s < 0 or size < 1:
            raise ValueError("the cache needs ttl_s >= 0 and size >= 1")
        self._ttl_s = ttl_s
        self._size = size
        self._clock = clock
        self._now = now
        self._entries: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()  # the sync client is shared by a server's threads

    @property
    def enabled(self) -> bool:
        """Whether anything is ever kept (``ttl_s`` above 0)."""
        return self._ttl_s > 0

    def get(self, key: str) -> Identity | None:
        """The identity kept for ``key``, if it has not expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, identity: Identity) -> None:
        """Keep ``identity`` for ``ttl_s``, or until its session expires if that is sooner."""
        ttl_s = self._ttl_s
        if identity.session is not None:
            ttl_s = min(ttl_s, (identity.session.expires_at - self._now()).total_seconds())
        if ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + ttl_s, identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
