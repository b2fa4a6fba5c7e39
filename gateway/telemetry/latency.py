"""The decision-latency histogram, observed on the hit path at the cost of a few list operations.

``Histogram.observe`` in multiprocess mode takes a lock and writes an mmap'd file: more than an
L1 hit costs. So each worker keeps plain per-bucket counts and a sum for every (endpoint, tier)
it has seen, and ``flush`` adds them to the Prometheus histogram (its per-bucket values, which
the exposition makes cumulative): the same numbers ``observe`` would have written, exactly, a
flush interval later.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Histogram

# An L1 hit is a few microseconds; a Postgres lookup under load, milliseconds; a stalled one, the
# budget (GATEWAY_DB_TIMEOUT_S, 2 s by default).
BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
ENDPOINTS = ("validate", "v1_validate", "get_session")
TIERS = ("l1", "cookie_cache", "redis", "postgres", "jwt", "joined", "none")


class Seconds:
    """One (endpoint, tier)'s observations since the last flush: counts per bucket (the last: +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float, _bounds: tuple[float, ...] = BUCKETS) -> None:
        """Count one observation: ``le`` semantics (a value on a bound is in that bucket)."""
        self.total += seconds
        self.counts[bisect_left(_bounds, seconds)] += 1


class DecisionSeconds:
    """Every (endpoint, tier) child of the decision histogram, counted in this worker until ``flush``."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[tuple[str, str], Seconds] = {}

    def child(self, endpoint: str, tier: str) -> Seconds:
        """The counts of one (endpoint, tier): bind its ``observe`` once for a hot path."""
        key = (endpoint if endpoint in ENDPOINTS else "validate", tier if tier in TIERS else "none")
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = Seconds()
        return found

    def observe(self, endpoint: str, tier: str, seconds: float) -> None:
        """Count one decision of ``endpoint`` that ``tier`` answered, in ``seconds``."""
        self.child(endpoint, tier).observe(seconds)

    def flush(self) -> None:
        """Add the counts to the Prometheus histogram and start again from zero."""
        for (endpoint, tier), seconds in self._children.items():
            counts = seconds.counts
            if not any(counts):
                continue
            child = self._histogram.labels(endpoint, tier)
            # Histogram.observe's own storage: one value per bucket (not cumulative), and the sum.
            for bucket, n in zip(child._buckets, counts, strict=True):  # noqa: SLF001  (see the module docstring)
                if n:
                    bucket.inc(n)
            child._sum.inc(seconds.total)  # noqa: SLF001
            # Reset in place: a hot path holds the bound ``observe`` of this very object.
            counts[:] = [0] * len(counts)
            seconds.total = 0.0
