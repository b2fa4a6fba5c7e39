"""Lookups on a streaming replica (started here, lag injected by pausing replay), checked on the primary.

A replica's miss is asked of the primary (a session created a moment ago validates); a replica's
hit for a token or user heard revoked, or any hit just after the listener flushed, is read again
on the primary (a revocation is never undone by the replica's lag).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign
from gateway.postgres import seed
from gateway.resources import Resources, open_resources
from tests.support.credentials import SECRET
from tests.support.postgres import create_database, install_triggers, with_database
from tests.support.replication import Replication, caught_up, pause_replay, postgres_bin, resume_replay
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from contextlib import AbstractAsyncContextManager

pytestmark = pytest.mark.skipif(
    postgres_bin() is None, reason="initdb/pg_ctl/pg_basebackup not installed (Debian: postgresql-15)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Replication]:
    """One primary and its replica for the module's tests (each test has a database of its own)."""
    replication = Replication()
    yield replication
    replication.stop()


class Pair:
    """The test's database on the primary and on the replica, with a connection to each."""

    def __init__(self, cluster: Replication, primary_dsn: str, primary: asyncpg.Connection) -> None:
        name = primary_dsn.rsplit("/", 1)[1]
        self.primary_dsn, self.replica_dsn = primary_dsn, with_database(cluster.dsn(replica=True), name)
        self.primary = primary
        self.replica: asyncpg.Connection

    def gateway(self, **overrides: Any) -> AbstractAsyncContextManager[Resources]:
        env = {
            "DATABASE_URL": overrides.pop("dsn", self.primary_dsn),
            "GATEWAY_READ_DATABASE_URL": self.replica_dsn,
            "BETTER_AUTH_SECRET": SECRET,
        } | overrides.pop("env", {})
        return open_resources(load_settings(env, overrides))


@pytest.fixture
async def pair(cluster: Replication) -> AsyncIterator[Pair]:
    dsn = await create_database(cluster.dsn())
    primary = await asyncpg.connect(dsn)
    await seed.create_schema(primary)
    pair = Pair(cluster, dsn, primary)
    pair.replica = await eventually(lambda: _connect(pair.replica_dsn))
    await caught_up(primary, pair.replica)
    try:
        yield pair
    finally:
        await resume_replay(pair.replica)
        await pair.replica.close()
        await primary.close()


async def _connect(dsn: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:  # the CREATE DATABASE not replayed yet
        return None


def cred(token: str) -> Any:
    return header_credential(sign(token, SECRET))


async def test_a_fresh_session_validates_despite_lag(pair: Pair) -> None:
    """Signed in on the primary while the replica lags: the replica's miss is asked of the primary, once."""
    await pause_replay(pair.replica)
    token = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="fresh@example.com"))
    async with pair.gateway(listen=False) as res:
        assert res.store is not None
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert (res.store.queries, res.store.primary_retries) == (1, 1)
        res.metrics.flush()
        assert _event(res, "replica_retry") == 1
        assert _event(res, "replica_lag_hidden") == 1


async def test_misses_cost_one_primary_query_per_batch(pair: Pair) -> None:
    """Fifty unknown tokens at once: one query on the replica, one on the primary, then the negative cache."""
    import asyncio  # noqa: PLC0415

    async with pair.gateway(listen=False) as res:
        assert res.store is not None
        tokens = [f"unknown{i:025d}" for i in range(50)]  # the shape of a token, no session
        verdicts = await asyncio.gather(*(res.decider.decide(cred(t)) for t in tokens))
        assert {v.reason for v in verdicts} == {Reason.unknown_session}
        assert (res.store.queries, res.store.primary_retries) == (1, 1)
        await asyncio.gather(*(res.decider.decide(cred(t)) for t in tokens))
        assert res.store.queries == 1  # remembered as absent


async def test_a_hit_on_the_replica_is_not_asked_again(pair: Pair) -> None:
    """A session the replica has is served from it: the primary is not asked."""
    token = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="old@example.com"))
    await caught_up(pair.primary, pair.replica)
    async with pair.gateway(listen=False) as res:
        assert res.store is not None
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert res.store.primary_retries == 0


async def listening(pair: Pair, res: Resources) -> None:
    await eventually(lambda: res.listener is not None and res.listener.connected)


@pytest.mark.parametrize("revoke", ["sign_out", "ban"])
async def test_a_revocation_heard_is_not_undone_by_the_lagging_replica(pair: Pair, revoke: str) -> None:
    """The NOTIFY (from the primary) arrives before the replica replays the change: the replica's row is doubted.

    The lookup after the notification begins in the new epoch, so the tiers would cache what it
    reads: read from the replica alone, the revoked session would be served and cached again.
    """
    await install_triggers(pair.primary_dsn)
    uid = await seed.create_user(pair.primary, email=f"{revoke}@example.com", role="user", banned=False)
    token = await seed.create_session(pair.primary, uid)
    await caught_up(pair.primary, pair.replica)
    async with pair.gateway() as res:
        await listening(pair, res)
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert res.store is not None
        assert res.store.primary_retries == 0
        heard = res.tiers.epoch
        await pause_replay(pair.replica)
        if revoke == "sign_out":
            await pair.primary.execute('delete from "session" where token = $1', token)
        else:
            await pair.primary.execute('update "user" set banned = true, "updatedAt" = now() where id = $1', uid)
        await eventually(lambda: res.tiers.epoch > heard)  # the notification is in
        refused = Reason.unknown_session if revoke == "sign_out" else Reason.banned
        assert (await res.decider.decide(cred(token))).reason is refused
        # The primary was asked: by the revocation's recheck (``Decider.recheck``), and for a ban
        # (never remembered as absent) by this request too, unless it joined the recheck in flight.
        assert res.store.primary_retries == 1 or (revoke == "ban" and res.store.primary_retries == 2)
        assert (await res.decider.decide(cred(token))).reason is refused  # and nothing was cached
        still = await pair.replica.fetchval('select count(*) from "session" where token = $1', token)
        banned = await pair.replica.fetchval('select banned from "user" where id = $1', uid)
        assert (still, banned) == (1, False)  # the replica did lag throughout


async def test_after_a_listener_outage_replica_hits_are_checked_on_the_primary(pair: Pair) -> None:
    """A sign-out while the listener was away is unheard: after the reconnect's flush, the primary decides."""
    await install_triggers(pair.primary_dsn)
    token = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="away@example.com"))
    await caught_up(pair.primary, pair.replica)
    proxy = await Proxy(pair.primary_dsn).start()
    try:
        async with pair.gateway(env={"GATEWAY_LISTEN_DATABASE_URL": proxy.dsn()}) as res:
            assert res.listener is not None
            await listening(pair, res)
            assert (await res.decider.decide(cred(token))).reason is Reason.ok
            assert res.store is not None
            assert res.store.primary_retries == 0
            proxy.cut()
            listener = res.listener
            assert listener is not None
            await eventually(lambda: not listener.connected)
            await pause_replay(pair.replica)
            await pair.primary.execute('delete from "session" where token = $1', token)  # nobody hears it
            proxy.restore()
            await listening(pair, res)  # flushed on reconnect
            assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
            retried = res.store.primary_retries
            await resume_replay(pair.replica)
            await caught_up(pair.primary, pair.replica)
            other = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="b@x.org"))
            await caught_up(pair.primary, pair.replica)
            assert (await res.decider.decide(cred(other))).reason is Reason.ok
            assert res.store.primary_retries == retried  # caught up: the replica is trusted again
    finally:
        await proxy.close()


def _event(res: Resources, name: str) -> float:
    value = res.metrics.registry.get_sample_value("gateway_events_total", {"event": name})
    return value or 0.0


async def test_replica_hits_are_distrusted_while_the_reconnect_flush_is_under_way(
    pair: Pair, redis_url: str, redis_prefix: str
) -> None:
    """Red team (issue 17), A: the replica is distrusted from the start of a reconnect's flush, not its end.

    With Redis, the flush awaits the generation bump (a Redis round trip, up to
    ``GATEWAY_REDIS_TIMEOUT_S`` when Redis is slow). The LRU is already empty then; a lookup in that
    window went to the lagging replica, still trusted, and a sign-out made while the listener was
    away was served. The bump is held here (real Redis, released after) to make the window certain.
    """
    import asyncio  # noqa: PLC0415

    await install_triggers(pair.primary_dsn)
    token = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="mid@example.com"))
    other = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="other@example.com"))
    await caught_up(pair.primary, pair.replica)
    proxy = await Proxy(pair.primary_dsn).start()
    env = {"GATEWAY_LISTEN_DATABASE_URL": proxy.dsn(), "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    try:
        async with pair.gateway(env=env) as res:
            listener, redis, store = res.listener, res.redis, res.store
            assert listener is not None
            assert redis is not None
            assert store is not None
            await listening(pair, res)
            assert (await res.decider.decide(cred(other))).reason is Reason.ok
            assert store.primary_retries == 0  # caught up since the first flush: the replica is trusted
            proxy.cut()
            await eventually(lambda: not listener.connected)
            await pause_replay(pair.replica)
            await pair.primary.execute('delete from "session" where token = $1', token)  # nobody hears it
            bump, entered, release = redis.bump_generation, asyncio.Event(), asyncio.Event()

            async def held_bump() -> bool:
                entered.set()
                await release.wait()
                return await bump()

            redis.bump_generation = held_bump  # type: ignore[method-assign]
            proxy.restore()
            await entered.wait()  # the reconnect's flush is under way: the LRU is empty, the bump not done
            try:
                assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
            finally:
                release.set()
            await listening(pair, res)
            assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
    finally:
        await proxy.close()


async def test_a_replica_that_caught_up_vouches_for_no_other(cluster: Replication, pair: Pair) -> None:
    """Red team (issue 17), B: after a flush, one server's replay position says nothing of another's.

    ``GATEWAY_READ_DATABASE_URL`` may name a reader endpoint (a load balancer, a DNS name, a
    PgBouncer with several hosts) whose connections reach different replicas. The check after a
    listener outage ran on one connection and then trusted every replica: a lookup on a second,
    lagging one served a sign-out nobody heard.
    """
    await install_triggers(pair.primary_dsn)
    token = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="lb@example.com"))
    other = await seed.create_session(pair.primary, await seed.create_user(pair.primary, email="lb2@example.com"))
    name = pair.primary_dsn.rsplit("/", 1)[1]
    lagging_dsn = with_database(f"postgresql://postgres@127.0.0.1:{cluster.add_replica()}/postgres", name)
    lagging = await eventually(lambda: _connect(lagging_dsn), within=60)
    await caught_up(pair.primary, pair.replica, within=60)  # a base backup just ran: a loaded machine takes a while
    await caught_up(pair.primary, lagging, within=60)
    reader, listen = await Proxy(pair.replica_dsn).start(), await Proxy(pair.primary_dsn).start()
    env = {"GATEWAY_READ_DATABASE_URL": reader.dsn(), "GATEWAY_LISTEN_DATABASE_URL": listen.dsn()}
    try:
        async with pair.gateway(env=env) as res:
            listener, store = res.listener, res.store
            assert listener is not None
            assert store is not None
            await listening(pair, res)
            listen.cut()
            await eventually(lambda: not listener.connected)
            await pause_replay(lagging)
            await pair.primary.execute('delete from "session" where token = $1', token)  # nobody hears it
            await caught_up(pair.primary, pair.replica)  # the first replica has it; the second lags
            listen.restore()
            await listening(pair, res)  # flushed: replica hits are checked until caught up
            assert (await res.decider.decide(cred(other))).reason is Reason.ok  # checked on the first replica
            reader.retarget(lagging_dsn)  # new connections reach the lagging one
            connections = store.pool_sizes()[0]  # the replica's and the primary's
            reader.cut()
            reader.restore()
            await eventually(lambda: store.pool_sizes()[0] < connections)  # the pool saw the replica's go
            assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
    finally:
        await resume_replay(lagging)
        await lagging.close()
        await reader.close()
        await listen.close()
