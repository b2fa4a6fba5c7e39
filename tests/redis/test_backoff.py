"""The reconnect back-off: exponential windows, capped, each wait drawn uniformly from its whole window."""

from __future__ import annotations

import random
from itertools import cycle

from gateway.redis.backoff import Backoff


def test_windows_double_up_to_the_cap() -> None:
    """With the random source at its top, the waits trace the windows: first, doubling, then the cap."""
    backoff = Backoff(0.5, 6.0, random=lambda: 1.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]


def test_each_wait_is_the_random_fraction_of_its_window() -> None:
    """Full jitter: a wait is the window times the random draw, anywhere from zero up."""
    draws = cycle([0.0, 0.25, 0.5])
    backoff = Backoff(1.0, 30.0, random=lambda: next(draws))
    assert [backoff.next() for _ in range(6)] == [0.0, 0.5, 2.0, 0.0, 4.0, 15.0]  # windows 1, 2, 4, 8, 16, 30 (the cap)


def test_reset_starts_again_from_the_first_window() -> None:
    """After a success the next failure waits within the first window again."""
    backoff = Backoff(0.2, 10.0, random=lambda: 1.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() == 0.2


def test_the_cap_holds_however_long_the_outage() -> None:
    """Thousands of failed attempts never overflow nor pass the cap."""
    backoff = Backoff(1.0, 30.0, random=lambda: 1.0)
    assert max(backoff.next() for _ in range(5000)) == 30.0


def test_a_cap_below_the_first_window_is_the_first_window() -> None:
    """GATEWAY_REDIS_BACKOFF_S above the cap: every wait stays within that first window."""
    backoff = Backoff(45.0, 30.0, random=lambda: 1.0)
    assert {backoff.next() for _ in range(5)} == {45.0}


def test_workers_do_not_retry_in_lockstep() -> None:
    """Fifty workers failing at the same moment spread their retries over the window, none at the same time."""
    workers = [Backoff(1.0, 30.0, random=random.Random(seed).random) for seed in range(50)]  # noqa: S311  (jitter)
    for _ in range(4):  # the fifth attempt: the window is 16 s
        for worker in workers:
            worker.next()
    fifth = sorted(worker.next() for worker in workers)
    assert len(set(fifth)) == 50
    assert fifth[0] < 2.0
    assert fifth[-1] > 14.0
    assert all(0.0 <= delay < 16.0 for delay in fifth)


async def test_wait_sleeps_for_the_drawn_delay() -> None:
    """``wait()`` returns what it slept for, drawn as ``next()`` draws it."""
    backoff = Backoff(0.01, 1.0, random=lambda: 0.0)
    assert await backoff.wait() == 0.0
