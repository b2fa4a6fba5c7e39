"""A limit on failed validations per client IP, in bounded memory. No I/O.

A token bucket per client: ``burst`` failures at once, refilled at ``per_minute``. Only failures
(no, forged, unknown or expired credentials) take from it, so a client with a valid session is
never slowed; once a client's bucket is empty, its requests that would need a lookup are refused
before any work (cache hits still pass). The buckets live in an LRU: a flood of addresses can't
grow memory past ``max_clients``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.forwarding import parse_ip, trusted
from gateway.lru import LRU
from gateway.sessions import Reason

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.forwarding import Network


# What counts as a failure: a credential that was presented and proved nothing. A request with no
# credential at all (a first visit, a signed-out browser) is normal traffic and costs no lookup.
FAILURES = frozenset(
    {
        Reason.malformed,
        Reason.bad_signature,
        Reason.unsigned_token,
        Reason.unknown_session,
        Reason.expired,
        Reason.banned,
        Reason.invalid_jwt,
    }
)


class FailureLimiter:
    """Per-client token buckets for failed validations."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        exempt: Sequence[Network] = (),
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = per_minute > 0
        self._rate = per_minute / 60.0
        self._burst = float(max(1, burst))
        self._exempt = tuple(exempt)
        self._clock = clock
        # A bucket left alone refills completely in burst / rate seconds: then it can go.
        self._buckets: LRU[list[float]] = LRU(max_clients, clock)
        self._idle_s = self._burst / self._rate if self.enabled else 0.0

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may be served again; 0 when it may now."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = self._refill(bucket)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate

    def record(self, client: str, reason: str) -> None:
        """Count a verdict against ``client`` if it was a failure (exempt clients have no bucket)."""
        if not self.enabled or reason not in FAILURES or (self._exempt and trusted(parse_ip(client), self._exempt)):
            return
        now = self._clock()
        bucket = self._buckets.get(client) or [self._burst, now]
        bucket[0] = self._refill(bucket) - 1
        bucket[1] = now
        self._buckets.put(client, bucket, now + self._idle_s)

    def _refill(self, bucket: list[float]) -> float:
        return min(self._burst, bucket[0] + (self._clock() - bucket[1]) * self._rate)

    def __len__(self) -> int:
        return len(self._buckets)
