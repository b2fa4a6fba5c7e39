"""The API key cache: one lookup per key, judged per request, never filled across an eviction.

The source is an in-memory port (the real one, ``postgres.api_keys``, is tested against Postgres
in tests/postgres/test_api_keys.py and end to end against the real plugin).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.core.errors import StoreUnavailable
from gateway.core.sessions import Reason
from gateway.credentials.api_keys import ApiKeyRecord, key_digest, stored_key
from gateway.credentials.tokens import Credential, Kind
from gateway.lookup.api_keys import ApiKeys, listening
from gateway.telemetry.metrics import Metrics
from tests.support.memory import Clock

if TYPE_CHECKING:
    from collections.abc import Awaitable

KEY = "K" * 64
DIGEST = key_digest(stored_key(KEY))


class Rules:
    api_key_disable_hashing = False
    api_key_min_length = 64
    api_key_max_length = 512
    api_key_config_id = "default"
    api_key_rate_limit = True
    api_key_session_expires_in = 604800


class Source:
    """Keys by ``key`` column; each fetch can be held until the test releases it."""

    def __init__(self) -> None:
        self.rows: dict[str, ApiKeyRecord] = {}
        self.fetches = 0
        self.reading = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def fetch(self, stored: str) -> ApiKeyRecord | None:
        self.fetches += 1
        self.reading.set()
        row = self.rows.get(stored)  # read, then answered when the gate opens
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            msg = "postgres is away"
            raise StoreUnavailable(msg)
        return row


class Turn:
    def __init__(self, *, granted: bool = True) -> None:
        self.granted = granted
        self.settled: list[bool] = []

    async def take(self, *, signed: str | None) -> bool:
        assert signed is None  # a key can be made up: it waits as a raw token does
        return self.granted

    def settle(self, *, spent: bool) -> None:
        self.settled.append(spent)


def world(clock: Clock) -> tuple[ApiKeys, Source]:
    source = Source()
    keys = ApiKeys(source, Rules(), max_entries=100, ttl_s=30, negative_ttl_s=2, metrics=Metrics(), clock=clock)
    source.rows[stored_key(KEY)] = ApiKeyRecord(id="k1", user_id="u1", user={"id": "u1"}, created_at=clock() - 60)
    return keys, source


def credential(value: str = KEY) -> Credential:
    return Credential("k:test", Kind.api_key, value)


async def test_a_key_is_looked_up_once_and_judged_at_each_request() -> None:
    clock = Clock()
    keys, source = world(clock)
    first = await keys.decide(credential())
    assert first.reason is Reason.ok
    assert first.session is not None
    assert (first.token, first.digest) == (KEY, DIGEST)
    assert first.session.session["id"] == "k1"
    assert (await keys.decide(credential())).reason is Reason.ok
    assert source.fetches == 1
    # The row says when it expires: the cached row is refused once that passes, with no new lookup.
    source.rows[stored_key(KEY)] = ApiKeyRecord(id="k2", user_id="u1", user={"id": "u1"}, expires_at=clock() + 5)
    keys.invalidate_key(DIGEST)
    assert (await keys.decide(credential())).reason is Reason.ok
    clock.advance(6)
    assert (await keys.decide(credential())).reason is Reason.expired
    assert (await keys.decide(credential())).reason is Reason.expired
    assert source.fetches == 2


async def test_garbage_is_refused_unread_and_an_unknown_key_remembered_briefly() -> None:
    clock = Clock()
    keys, source = world(clock)
    assert (await keys.decide(credential("K" * 63))).reason is Reason.malformed
    assert (await keys.decide(credential(KEY[:-1] + " "))).reason is Reason.malformed
    assert source.fetches == 0
    unknown = credential("U" * 64)
    assert (await keys.decide(unknown)).reason is Reason.unknown_session
    assert (await keys.decide(unknown)).reason is Reason.unknown_session
    assert source.fetches == 1
    clock.advance(2.5)
    assert (await keys.decide(unknown)).reason is Reason.unknown_session
    assert source.fetches == 2


async def test_concurrent_requests_share_one_lookup() -> None:
    keys, source = world(Clock())
    source.gate = asyncio.Event()
    pending = [asyncio.ensure_future(keys.decide(credential())) for _ in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    assert {v.reason for v in await asyncio.gather(*pending)} == {Reason.ok}
    assert source.fetches == 1


async def test_a_lookup_that_straddles_a_revocation_caches_nothing() -> None:
    """Read before the DELETE, answered after its notification: not cached, so the next request reads again."""
    keys, source = world(Clock())
    source.gate = asyncio.Event()
    pending = asyncio.ensure_future(keys.decide(credential()))
    await source.reading.wait()  # the lookup has read the row
    del source.rows[stored_key(KEY)]
    keys.invalidate_key(DIGEST)  # the trigger's k:<digest>
    source.gate.set()
    assert (await pending).reason is Reason.ok  # what it read, for the request in flight
    assert (await keys.decide(credential())).reason is Reason.unknown_session
    assert source.fetches == 2


async def test_an_outage_is_a_503_and_never_cached() -> None:
    keys, source = world(Clock())
    source.fail = True
    assert (await keys.decide(credential())).reason is Reason.backend_unavailable
    source.fail = False
    assert (await keys.decide(credential())).reason is Reason.ok


async def test_the_failure_budget_counts_failed_lookups_only() -> None:
    keys, _ = world(Clock())
    turn = Turn()
    assert (await keys.decide(credential("U" * 64), turn)).reason is Reason.unknown_session
    assert (await keys.decide(credential(), turn)).reason is Reason.ok
    assert turn.settled == [True, False]
    assert (await keys.decide(credential(), Turn(granted=False))).reason is Reason.ok  # cached: no turn needed
    assert (await keys.decide(credential("V" * 64), Turn(granted=False))).reason is Reason.rate_limited


class Sessions:
    """The sessions' invalidator, recording what it hears."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        self.heard.append("s:" + digest)
        return None

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        self.heard.append("u:" + user_id)
        return None

    async def flush(self) -> None:
        self.heard.append("*")


async def test_the_listener_tells_the_keys_of_users_flushes_and_missing_triggers() -> None:
    keys, source = world(Clock())
    sessions = Sessions()
    bounds: list[bool] = []
    invalidator, on_triggers, on_api_key = listening(sessions, keys, bounds.append, 5.0)
    assert on_api_key is not None
    await keys.decide(credential())
    invalidator.invalidate_user("u1")  # a ban, a deletion: every key goes
    await keys.decide(credential())
    await invalidator.flush()
    await keys.decide(credential())
    on_api_key("*")  # the apikey table truncated
    await keys.decide(credential())
    on_triggers(False)  # noqa: FBT003 — the triggers went away: the TTL is capped, and what was cached goes
    await keys.decide(credential())
    assert source.fetches == 5
    assert sessions.heard == ["u:u1", "*"]
    assert bounds == [False]
    plain = listening(sessions, None, bounds.append, 5.0)
    assert (plain.invalidator, plain.on_api_key) == (sessions, None)
