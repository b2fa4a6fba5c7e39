"""The keyspace listener against a real Redis: Better Auth's key changes become evictions; reconnects flush."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from gateway.redis.keyspace import KeyspaceListener
from gateway.redis.secondary_storage import SecondaryStorage
from tests.support.redis import RedisServer
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PREFIX = "better-auth:"


class Recorder:
    """An ``Invalidator`` that writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def invalidate_token(self, digest: str) -> None:
        self.calls.append(("token", digest))

    def invalidate_user(self, user_id: str) -> None:
        self.calls.append(("user", user_id))

    async def flush(self) -> None:
        self.calls.append(("flush", ""))


@pytest.fixture
def notifying(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own that publishes keyspace notifications (as Better Auth's should)."""
    server = RedisServer(tmp_path, "--notify-keyspace-events", "KEA")
    yield server
    server.kill()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_better_auths_key_changes_evict(notifying: RedisServer) -> None:
    """A session key set, deleted or expired evicts its token; a bulk revocation evicts its user; others nothing."""
    recorder, events = Recorder(), list[str]()
    storage = SecondaryStorage(aioredis.Redis.from_url(notifying.url), PREFIX, 1.0)
    listener = KeyspaceListener(storage, recorder, 0.1, event=events.append)
    writer = aioredis.Redis.from_url(notifying.url)
    listener.start()
    try:
        await eventually(lambda: listener.connected)
        assert recorder.calls == [("flush", "")]  # subscribed, then flushed: what came before is unknown
        assert events == ["listener_connect"]
        await writer.set("other-app:tok1", "x")  # not Better Auth's
        await writer.set(PREFIX + "active-sessions-u1", "[]")  # a list, not a session
        await writer.set(PREFIX + "tok1", "{}")
        await writer.delete(PREFIX + "tok1")
        await writer.set(PREFIX + "tok2", "{}", px=1)  # expires at once
        await writer.set(PREFIX + "revoked-sessions-before-u1", "1732950000000")
        await eventually(lambda: len(recorder.calls) == 5)
        assert recorder.calls[1:3] == [("token", sha("tok1")), ("token", sha("tok1"))]
        assert set(recorder.calls[3:]) == {("token", sha("tok2")), ("user", "u1")}
    finally:
        await listener.close()
        await writer.aclose()
        await storage.close()


async def test_a_lost_subscription_reconnects_with_jitter_and_flushes(notifying: RedisServer) -> None:
    """Redis restarted: the listener says it is down, retries after jittered waits, and flushes once back."""
    recorder, draws = Recorder(), []

    def jitter() -> float:
        draws.append(0.1)
        return 0.1

    storage = SecondaryStorage(aioredis.Redis.from_url(notifying.url), PREFIX, 1.0)
    listener = KeyspaceListener(storage, recorder, 0.2, random=jitter)
    listener.start()
    try:
        await eventually(lambda: listener.connected)
        notifying.kill()
        await eventually(lambda: not listener.connected)
        await eventually(lambda: len(draws) >= 2)  # attempts while it is away, each after a jittered wait
        notifying.start()
        await eventually(lambda: listener.connections == 2)
        assert listener.connected
        assert recorder.calls == [("flush", ""), ("flush", "")]
    finally:
        await listener.close()
        await storage.close()
