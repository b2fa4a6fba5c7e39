"""The sliding refresh's write against a real Postgres: Better Auth's values, one write however many race."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from typing import TYPE_CHECKING, Literal

import pytest

from gateway.config import load_settings
from gateway.credentials.tokens import token_hash
from gateway.lookup.refresh import Outcome
from gateway.postgres import seed
from gateway.postgres.admin import check_database
from gateway.postgres.refresh import PostgresWriter, _server_now
from tests.support.credentials import cred
from tests.support.ports import free_port
from tests.support.postgres import as_role, install_triggers
from tests.support.resources import Open, open_gateway

if TYPE_CHECKING:
    import asyncpg

    from gateway.resources import Resources

DAY = dt.timedelta(days=1)
# Counts the UPDATEs of the session table that change a row: what "one write" means.
COUNT_UPDATES = """
CREATE TABLE IF NOT EXISTS session_updates (n int NOT NULL);
INSERT INTO session_updates VALUES (0);
CREATE OR REPLACE FUNCTION count_session_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE session_updates SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER count_session_update AFTER UPDATE ON "session" FOR EACH ROW EXECUTE FUNCTION count_session_update();
"""


@pytest.fixture
def gateway(database: str) -> Open:
    """The gateway's resources on the test database, without the listener."""
    return functools.partial(open_gateway, dsn=database, listen=False)


async def age(db: asyncpg.Connection, token: str, *, expires_in: dt.timedelta, updated_ago: dt.timedelta) -> None:
    """Set a session's expiresAt and updatedAt back, as time passing would have."""
    now = seed.now()
    sql = 'UPDATE "session" SET "expiresAt" = $2, "updatedAt" = $3 WHERE token = $1'
    await db.execute(sql, token, now + expires_in, now - updated_ago)


async def row(db: asyncpg.Connection, token: str) -> asyncpg.Record:
    found = await db.fetchrow('SELECT * FROM "session" WHERE token = $1', token)
    assert found is not None
    return found


async def due_session(res: Resources, token: str) -> tuple[str, object]:
    verdict = await res.decider.decide(cred(token))
    assert verdict.session is not None
    assert res.refresher is not None
    assert res.refresher.rule.due(verdict.session, time.time())
    return cred(token).key, verdict.session


async def test_a_due_session_slides_as_better_auth_slides_it(db: asyncpg.Connection, gateway: Open) -> None:
    """expiresAt becomes now + expiresIn, updatedAt now (in ms), nothing else changes; the LRU holds the slid row."""
    uid = await seed.create_user(db, email="slide@example.com")
    token = await seed.create_session(db, uid)
    await age(db, token, expires_in=5 * DAY, updated_ago=2 * DAY)
    before = await row(db, token)
    async with gateway() as res:
        key, session = await due_session(res, token)
        assert res.refresher is not None
        started = time.time()
        refreshed = await res.refresher.refresh(key, token, token_hash(token), session)  # type: ignore[arg-type]
        assert refreshed.outcome is Outcome.written
        after = await row(db, token)
        assert after["expiresAt"] - after["updatedAt"] == 7 * DAY
        assert started - 1 <= after["updatedAt"].timestamp() <= time.time()
        assert after["updatedAt"].microsecond % 1000 == 0  # a JavaScript Date: milliseconds
        unchanged = {k for k in before.keys() if k not in ("expiresAt", "updatedAt")}  # noqa: SIM118
        assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
        assert refreshed.session is not None
        assert refreshed.session.expires_at == after["expiresAt"].timestamp()
        cached = res.tiers.l1.get(key)
        assert cached is not None
        assert cached.session == refreshed.session  # the entry replaced, no lookup needed
        assert not res.refresher.rule.due(refreshed.session, time.time())


async def test_a_session_not_due_expired_or_gone_is_never_written(db: asyncpg.Connection, gateway: Open) -> None:
    """The conditional write slides only a row still due and unexpired; otherwise it answers the row as it is."""
    uid = await seed.create_user(db, email="guard@example.com")
    fresh, expired, gone = [await seed.create_session(db, uid) for _ in range(3)]
    await db.execute(COUNT_UPDATES)
    async with gateway() as res:
        assert res.refresher is not None
        verdict = await res.decider.decide(cred(fresh))
        assert verdict.session is not None
        not_due = await res.refresher.refresh(cred(fresh).key, fresh, token_hash(fresh), verdict.session)
        assert not_due.outcome is Outcome.joined  # the row as it is: nothing written
        await db.execute('UPDATE "session" SET "expiresAt" = now() - interval \'1 second\' WHERE token = $1', expired)
        await db.execute('DELETE FROM "session" WHERE token = $1', gone)
        writes = await db.fetchval("SELECT n FROM session_updates")
        for token in (expired, gone):
            refreshed = await res.refresher.refresh(cred(token).key, token, token_hash(token), verdict.session)
            assert refreshed == (None, Outcome.gone), token
        assert await db.fetchval("SELECT n FROM session_updates") == writes
        assert (await row(db, expired))["expiresAt"] < seed.now()


async def test_racing_writers_write_once_and_all_answer_the_slid_row(db: asyncpg.Connection, database: str) -> None:
    """Four gateways (own pools, as four workers) each sliding one due session four times at once: one UPDATE."""
    uid = await seed.create_user(db, email="race@example.com")
    token = await seed.create_session(db, uid)
    await age(db, token, expires_in=5 * DAY, updated_ago=2 * DAY)
    await db.execute(COUNT_UPDATES)
    async with contextlib.AsyncExitStack() as stack:
        gateways = [await stack.enter_async_context(open_gateway(database, listen=False)) for _ in range(4)]
        sessions = [(await due_session(res, token))[1] for res in gateways]
        calls = [
            res.refresher.refresh(cred(token).key, token, token_hash(token), session)  # type: ignore[union-attr, arg-type]
            for res, session in zip(gateways, sessions, strict=True)
            for _ in range(4)
        ]
        results = await asyncio.gather(*calls)
    assert await db.fetchval("SELECT n FROM session_updates") == 1
    assert [r.outcome for r in results].count(Outcome.written) == 1
    assert {r.session.expires_at for r in results if r.session is not None} == {
        (await row(db, token))["expiresAt"].timestamp()
    }
    assert all(r.session is not None for r in results)


async def test_the_triggers_stay_silent_on_a_slide(db: asyncpg.Connection, database: str, gateway: Open) -> None:
    """A slide (expiresAt later, updatedAt touched) notifies no gateway: nothing is evicted needlessly."""
    await install_triggers(database)
    uid = await seed.create_user(db, email="quiet@example.com")
    token = await seed.create_session(db, uid)
    await age(db, token, expires_in=5 * DAY, updated_ago=2 * DAY)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("better_auth_gateway", lambda *args: heard.put_nowait(args[-1]))
    async with gateway() as res:
        key, session = await due_session(res, token)
        assert res.refresher is not None
        refreshed = await res.refresher.refresh(key, token, token_hash(token), session)  # type: ignore[arg-type]
        assert refreshed.outcome is Outcome.written
        await db.execute('UPDATE "session" SET "expiresAt" = now() WHERE token = $1', token)  # a revocation is heard
        assert (await asyncio.wait_for(heard.get(), 5)).startswith("s:")
    assert heard.empty()


async def test_an_unavailable_postgres_answers_the_session_as_read(db: asyncpg.Connection, gateway: Open) -> None:
    """A slide that cannot be written (Postgres away) answers the session as read, counted: never a 503."""
    uid = await seed.create_user(db, email="away@example.com")
    token = await seed.create_session(db, uid)
    await age(db, token, expires_in=5 * DAY, updated_ago=2 * DAY)
    async with gateway() as res:
        key, session = await due_session(res, token)
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with open_gateway(dead, listen=False, startup_wait_s=0, db_timeout_s=0.2) as res:
        assert res.refresher is not None
        refreshed = await res.refresher.refresh(key, token, token_hash(token), session)  # type: ignore[arg-type]
        assert refreshed == (session, Outcome.unavailable)
        res.metrics.flush()
        assert 'gateway_events_total{event="refresh_unavailable"} 1.0' in res.metrics.exposition().decode()


async def test_snake_case_timestamps_without_time_zone(bare_db: asyncpg.Connection, database: str) -> None:
    """Drizzle's layout (snake_case, ``timestamp`` without time zone) slides in UTC, to the millisecond."""
    await seed.create_schema(bare_db, "drizzle")
    uid = await seed.create_user(bare_db, email="drizzle@example.com", layout="drizzle")
    token = await seed.create_session(bare_db, uid, layout="drizzle", expires_in=5 * DAY)
    async with open_gateway(database, listen=False, schema_preset="drizzle") as res:
        key, session = await due_session(res, token)
        assert res.refresher is not None
        refreshed = await res.refresher.refresh(key, token, token_hash(token), session)  # type: ignore[arg-type]
    assert refreshed.outcome is Outcome.written
    found = await bare_db.fetchrow("SELECT expires_at, updated_at FROM session WHERE token = $1", token)
    assert found is not None
    assert found["expires_at"] - found["updated_at"] == 7 * DAY
    assert abs(found["updated_at"].replace(tzinfo=dt.UTC).timestamp() - time.time()) < 5  # UTC, not local time


async def test_check_config_says_whether_the_role_may_slide(db: asyncpg.Connection, database: str) -> None:
    """check-config: SELECT only is a warning naming the GRANT; UPDATE on both columns is ok; off says read-only.

    At run time, a role refused the write answers the session as read, and is not asked again for a while.
    """
    role = "gw_reader_" + seed.generate_id(6).lower()
    await db.execute(f"create role {role} login password 'reader'")
    await db.execute(f'grant select on "session", "user" to {role}')
    dsn = as_role(database, role, "reader")
    settings = functools.partial(load_settings, {"DATABASE_URL": dsn}, need=frozenset({"database"}))
    try:
        reader = [f for f in await check_database(settings({"listen": False})) if "sliding" in f.text]
        assert [f.level for f in reader] == ["warning"]
        assert 'GRANT UPDATE ("expiresAt", "updatedAt") ON "session" TO <role>' in reader[0].text
        assert 'may not UPDATE them ("expiresAt" and "updatedAt" of "session")' in reader[0].text
        uid = await seed.create_user(db, email="reader@example.com")
        token = await seed.create_session(db, uid)
        await age(db, token, expires_in=5 * DAY, updated_ago=2 * DAY)
        async with open_gateway(dsn, listen=False) as res:
            key, session = await due_session(res, token)
            assert res.refresher is not None
            for _ in range(2):
                refreshed = await res.refresher.refresh(key, token, token_hash(token), session)  # type: ignore[arg-type]
                assert refreshed == (session, Outcome.unavailable)
            res.metrics.flush()
            assert 'gateway_events_total{event="refresh_unavailable"} 2.0' in res.metrics.exposition().decode()
            assert isinstance(res.refresher.writer, PostgresWriter)
            assert res.refresher.writer.attempts == 1  # the second was not even sent
        await db.execute(f'grant update ("expiresAt", "updatedAt") on "session" to {role}')
        writer = [f for f in await check_database(settings({"listen": False})) if "sliding" in f.text]
        assert [f.level for f in writer] == ["ok"]
        off = [
            f
            for f in await check_database(settings({"listen": False, "session_refresh": "off"}))
            if "sliding" in f.text
        ]
        assert [(f.level, "read-only" in f.text) for f in off] == [("ok", True)]
    finally:
        await db.execute(f'revoke all on "session", "user" from {role}')
        await db.execute(f"drop role {role}")


@pytest.mark.parametrize("layout", ["default", "drizzle"])
async def test_a_revocation_committed_after_the_gateway_read_its_clock_is_not_slid_over(
    bare_db: asyncpg.Connection, database: str, layout: Literal["default", "drizzle"]
) -> None:
    """Red team: the condition compared ``expiresAt`` with the gateway's clock, read before the write.

    A preserve-mode revocation (``expiresAt`` set to now) committed between that read and the
    ``UPDATE`` still looked unexpired, and the slide gave the revoked session another ``expiresIn``.
    Here the gateway's clock lags by 5 s (the same as a revocation landing 5 s after it was read):
    the row must stay revoked. Both ``timestamptz`` and Drizzle's ``timestamp`` columns.
    """
    await seed.create_schema(bare_db, layout)
    uid = await seed.create_user(bare_db, email=f"late-{layout}@example.com", layout=layout)
    token = await seed.create_session(bare_db, uid, layout=layout, expires_in=5 * DAY)
    lagging = functools.partial(lambda skew: time.time() - skew, 5.0)
    preset = {"schema_preset": "drizzle"} if layout == "drizzle" else {}
    column = "expires_at" if layout == "drizzle" else '"expiresAt"'
    async with open_gateway(database, listen=False, clock=lagging, **preset) as res:
        verdict = await res.decider.decide(cred(token))
        assert verdict.session is not None
        assert res.refresher is not None
        now_sql = "(now() AT TIME ZONE 'UTC')" if layout == "drizzle" else "now()"
        revoke = f"UPDATE session SET {column} = {now_sql} - interval '1 second' WHERE token = $1"  # noqa: S608
        await bare_db.execute(revoke, token)  # revoked after the verdict, before the slide
        await res.refresher.refresh(cred(token).key, token, token_hash(token), verdict.session)
    expires = await bare_db.fetchval(f"SELECT {column} FROM session WHERE token = $1", token)  # noqa: S608
    expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)
    assert expires < seed.now(), "the revoked session was slid"


@pytest.mark.parametrize(
    ("data_type", "literal"),
    [
        ("bigint", "(extract(epoch from now()) * 1000)::bigint"),
        ("double precision", "extract(epoch from now())::double precision * 1000"),
        ("timestamp without time zone", "(now() AT TIME ZONE 'UTC')"),
        ("timestamp with time zone", "now()"),
    ],
)
async def test_the_servers_clock_in_each_column_type(db: asyncpg.Connection, data_type: str, literal: str) -> None:
    """The slide's second condition reads Postgres's clock in the column's own type and unit."""
    server_now = _server_now(data_type)
    # a value a minute ahead is later than the server's clock; a minute behind is not
    minute = "interval '1 minute'" if "time" in data_type else "60000"
    ahead, behind = f"({literal} + {minute})", f"({literal} - {minute})"
    assert await db.fetchval(f"SELECT {ahead} > {server_now} AND NOT {behind} > {server_now}")
    assert _server_now("text") == ""  # a type it cannot read the clock in: the gateway's clock alone
