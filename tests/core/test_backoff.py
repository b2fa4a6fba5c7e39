"""Jittered exponential back-off: the delays are drawn below a doubling, capped ceiling."""

from __future__ import annotations

import random

from gateway.core.backoff import Backoff, jitter


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


def test_each_delay_is_the_random_fraction_of_its_ceiling() -> None:
    """Full jitter from a source of fractions: the delay is the ceiling times the draw, from zero up."""
    draws = iter([0.0, 0.25, 0.5, 0.0, 0.25, 0.5])
    backoff = Backoff(1.0, 30.0, uniform=jitter(lambda: next(draws)))
    assert [backoff.next() for _ in range(6)] == [0.0, 0.5, 2.0, 0.0, 4.0, 15.0]  # ceilings 1, 2, 4, 8, 16, 30


def test_a_cap_below_the_first_delay_is_the_cap() -> None:
    """A first delay configured above the cap (GATEWAY_REDIS_BACKOFF_S = 45): every delay stays within the cap."""
    backoff = Backoff(45.0, 30.0, uniform=lambda _lo, hi: hi)
    assert {backoff.next() for _ in range(5)} == {30.0}


def test_fifty_workers_do_not_retry_in_lockstep() -> None:
    """Fifty workers failing at once spread their fifth retry over its whole window, none at the same time."""
    workers = [Backoff(1.0, 30.0, uniform=jitter(random.Random(seed).random)) for seed in range(50)]  # noqa: S311  (jitter)
    for _ in range(4):
        for worker in workers:
            worker.next()
    fifth = sorted(worker.next() for worker in workers)  # the ceiling is 16 s
    assert len(set(fifth)) == 50
    assert fifth[0] < 2.0
    assert fifth[-1] > 14.0
    assert all(0.0 <= delay <= 16.0 for delay in fifth)


async def test_wait_sleeps_for_the_drawn_delay() -> None:
    """``wait()`` returns what it slept for, drawn as ``next()`` draws it."""
    backoff = Backoff(0.01, 1.0, uniform=lambda lo, _hi: lo)
    assert await backoff.wait() == 0.0
