"""Jittered exponential back-off: the delays are drawn below a doubling, capped ceiling."""

from __future__ import annotations

import random

from gateway.core.backoff import Backoff


def test_ceilings_double_up_to_the_cap_and_reset() -> None:
    """Full jitter: each delay in [0, min(cap, first * 2**attempt)]; reset starts over."""
    asked: list[tuple[float, float]] = []

    def top(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return hi

    backoff = Backoff(0.1, 1.0, uniform=top)
    delays = [backoff.next() for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(lo == 0.0 for lo, _ in asked)
    backoff.reset()
    assert backoff.next() == 0.1


def test_delays_are_spread_not_in_lockstep() -> None:
    """Two workers with their own random sources draw different delays at the same attempt."""
    sources = [random.Random(seed) for seed in (1, 2)]  # noqa: S311  (jitter, not secrecy)
    workers = [Backoff(0.1, 5.0, uniform=source.uniform) for source in sources]
    first, second = ([w.next() for _ in range(8)] for w in workers)
    assert first != second
    assert all(0.0 <= d <= min(5.0, 0.1 * 2**i) for i, d in enumerate(first))


def test_a_huge_attempt_count_stays_capped() -> None:
    """No overflow after a very long outage."""
    backoff = Backoff(0.1, 5.0, uniform=lambda _lo, hi: hi)
    backoff.attempt = 10_000
    assert backoff.next() == 5.0
