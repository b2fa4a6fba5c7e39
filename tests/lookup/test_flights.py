"""Single-flight: one fetch for concurrent callers, immune to cancellation, never joined across a revocation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from gateway.core.errors import StoreUnavailable
from gateway.lookup.flights import Flights, Loaded
from gateway.lookup.revocations import Revocations
from tests.support.memory import Clock, Gate, session

if TYPE_CHECKING:
    from gateway.core.sessions import Session

DIGEST = "d" * 64


class Fetches:
    """A fetch the test holds at a gate; counts how often it was started and with which count."""

    def __init__(self, result: Session | None = None) -> None:
        self.result = result
        self.started: list[int] = []
        self.gate = Gate()
        self.error: Exception | None = None

    async def __call__(self, since: int) -> Session | None:
        self.started.append(since)
        await self.gate()
        if self.error is not None:
            raise self.error
        return self.result


def flights() -> tuple[Flights, Revocations]:
    revocations = Revocations(Clock(), revoked_for_s=60)
    return Flights(revocations), revocations


async def test_concurrent_callers_share_one_fetch() -> None:
    """Fifty callers of one token while its fetch is on its way: one fetch, fifty answers, joins counted."""
    group, _ = flights()
    fetch = Fetches(session())
    fetch.gate.close()
    joins: list[None] = []
    callers = [asyncio.ensure_future(group.run("t", DIGEST, fetch, lambda: joins.append(None))) for _ in range(50)]
    await fetch.gate.arrived()
    assert group.joinable("t", DIGEST)
    assert not group.joinable("other", DIGEST)
    fetch.gate.open()
    results = await asyncio.gather(*callers)
    assert fetch.started == [0]
    assert len(joins) == 49
    assert all(r.session is fetch.result and r == Loaded(fetch.result, DIGEST, 0) for r in results)
    assert len(group) == 0  # settled: the next caller fetches again
    assert not group.joinable("t", DIGEST)


async def test_a_cancelled_caller_cancels_only_its_own_wait() -> None:
    """The caller that started the fetch goes away: the fetch runs on and the others get its answer."""
    group, _ = flights()
    fetch = Fetches(session())
    fetch.gate.close()
    first = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived()
    joined = asyncio.Event()
    second = asyncio.ensure_future(group.run("t", DIGEST, fetch, joined.set))
    await joined.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    fetch.gate.open()
    assert (await second).session == fetch.result
    assert fetch.started == [0]


async def test_every_caller_gets_the_fetchs_error() -> None:
    """A fetch that fails fails every caller that joined it, with the same error; none is left unretrieved."""
    group, _ = flights()
    fetch = Fetches()
    fetch.error = StoreUnavailable("down")
    fetch.gate.close()
    callers = [asyncio.ensure_future(group.run("t", DIGEST, fetch)) for _ in range(3)]
    await fetch.gate.arrived()
    fetch.gate.open()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable] * 3
    assert fetch.started == [0]


async def test_no_join_across_a_revocation_of_the_token() -> None:
    """A caller arriving after its token was revoked starts a fetch of its own, dated after the revocation."""
    group, revocations = flights()
    fetch = Fetches(session())
    fetch.gate.close()
    early = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived()
    revocations.token(DIGEST)
    assert not group.joinable("t", DIGEST)
    late = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived(2)
    fetch.gate.open()
    assert (await early).invalidations == 0
    assert (await late).invalidations == 1
    assert fetch.started == [0, 1]


async def test_others_revocations_do_not_stop_a_join() -> None:
    """Revocations of other tokens and users (anyone may NOTIFY) do not cost a caller a fetch of its own."""
    group, revocations = flights()
    fetch = Fetches(session("u1"))
    fetch.gate.close()
    early = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived()
    revocations.token("e" * 64)
    revocations.user("u2")
    assert group.joinable("t", DIGEST)
    late = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    fetch.gate.open()
    assert (await late).invalidations == (await early).invalidations == 0
    assert fetch.started == [0]


async def test_a_joiner_whose_user_was_revoked_meanwhile_asks_again() -> None:
    """The user is known only once the fetch ends: if it was revoked meanwhile, a joiner fetches again."""
    group, revocations = flights()
    fetch = Fetches(session("u1"))
    fetch.gate.close()
    early = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived()
    joined = asyncio.Event()
    late = asyncio.ensure_future(group.run("t", DIGEST, fetch, joined.set))
    await joined.wait()
    revocations.user("u1")
    fetch.gate.open()
    assert (await early).invalidations == 0  # its caller decides what to do with it (tiers: not cached)
    assert (await late).invalidations == 1
    assert fetch.started == [0, 1]


async def test_no_join_after_a_flush() -> None:
    """A flush makes every fetch in flight unjoinable."""
    group, revocations = flights()
    fetch = Fetches(None)
    fetch.gate.close()
    early = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await fetch.gate.arrived()
    revocations.flush()
    assert not group.joinable("t", DIGEST)
    fetch.gate.open()
    await early


async def test_a_fetch_that_is_a_future_runs_in_no_task_and_outlives_its_starter() -> None:
    """The tiers' fetch is a future (``lookup.fetch``): shared as it is, no task; its starter leaving leaves it be."""
    group, _ = flights()
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Session | None]] = []

    def fetch(_: int) -> asyncio.Future[Session | None]:
        futures.append(loop.create_future())
        return futures[-1]

    tasks_before = len(asyncio.all_tasks())
    first = asyncio.ensure_future(group.run("t", DIGEST, fetch))
    await asyncio.sleep(0)
    joined = asyncio.Event()
    second = asyncio.ensure_future(group.run("t", DIGEST, fetch, joined.set))
    await joined.wait()
    assert len(asyncio.all_tasks()) == tasks_before + 2  # the two callers: the fetch has none
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not futures[0].cancelled()  # the fetch the other caller waits for
    futures[0].set_result(session())
    assert (await second).session == futures[0].result()
    assert len(futures) == 1
    assert len(group) == 0


async def test_a_future_fetchs_error_reaches_every_caller() -> None:
    """An exception set on a fetch that is a future is every caller's (a 503 upstream, never a 401)."""
    group, _ = flights()
    fetched: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
    callers = [asyncio.ensure_future(group.run("t", DIGEST, lambda _: fetched)) for _ in range(3)]
    await asyncio.sleep(0)
    fetched.set_exception(StoreUnavailable("down"))
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable] * 3
