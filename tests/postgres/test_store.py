"""Lookups and decisions against a real Postgres, for every schema layout the gateway maps."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import math
import time
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import StoreUnavailable
from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign
from gateway.postgres import seed
from gateway.postgres.rows import iso_string, json_value
from tests.support.credentials import SECRET, cred
from tests.support.ports import free_port
from tests.support.resources import Open, open_gateway
from tests.support.tcp_proxy import Proxy


@pytest.fixture
def gateway(database: str) -> Open:
    """Open the gateway's resources on the test database (another with ``dsn=``) with setting overrides."""
    return functools.partial(open_gateway, dsn=database, listen=False)  # test_invalidation has the listener


async def test_valid_session_has_better_auths_fields(db: asyncpg.Connection, gateway: Open) -> None:
    """A live session yields Better Auth's field names and ISO dates, and no token anywhere."""
    uid = await seed.create_user(db, email="ada@example.com", name="Ada", role="admin", banned=False)
    token = await seed.create_session(db, uid)
    async with gateway(plugins="admin") as res:
        verdict = await res.decider.decide(cred(token))
    assert verdict.reason is Reason.ok
    s = verdict.session
    assert s is not None
    assert s.user_id == uid
    assert s.user["email"] == "ada@example.com"
    assert s.user["role"] == "admin"
    assert s.user["emailVerified"] is False
    assert s.session["userId"] == uid
    assert s.session["expiresAt"].endswith("Z")
    assert len(s.session["expiresAt"]) == 24  # YYYY-MM-DDTHH:MM:SS.sssZ
    assert token not in repr(s)
    assert "token" not in s.session


async def test_refusals(db: asyncpg.Connection, gateway: Open) -> None:
    """Unknown, expired and banned sessions are refused with their reason; an expired ban is no ban."""
    now = seed.now()
    ok_uid = await seed.create_user(db, email="ok@example.com")
    banned = await seed.create_user(db, email="banned@example.com", banned=True)
    ban_later = await seed.create_user(
        db, email="later@example.com", banned=True, banExpires=now + dt.timedelta(days=1)
    )
    ban_over = await seed.create_user(db, email="over@example.com", banned=True, banExpires=now - dt.timedelta(days=1))
    expired = await seed.create_session(db, ok_uid, expires_in=dt.timedelta(seconds=-1))
    cases = {
        seed.generate_id(): Reason.unknown_session,
        expired: Reason.expired,
        await seed.create_session(db, banned): Reason.banned,
        await seed.create_session(db, ban_later): Reason.banned,
        await seed.create_session(db, ban_over): Reason.ok,
    }
    async with gateway() as res:
        for token, reason in cases.items():
            assert (await res.decider.decide(cred(token))).reason is reason


async def test_deleted_user_and_deleted_session(db: asyncpg.Connection, gateway: Open) -> None:
    """A session whose row or user is gone is unknown (with the L1 off, at once)."""
    uid = await seed.create_user(db, email="gone@example.com")
    token = await seed.create_session(db, uid)
    other = await seed.create_session(db, await seed.create_user(db, email="other@example.com"))
    async with gateway(l1_max_entries=0) as res:
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        await db.execute('delete from "user" where id = $1', uid)
        assert (await res.decider.decide(cred(token))).reason is Reason.unknown_session
        await db.execute('delete from "session" where token = $1', other)
        assert (await res.decider.decide(cred(other))).reason is Reason.unknown_session


async def test_core_schema_without_plugins(database: str, gateway: Open) -> None:
    """Better Auth's exact default DDL (no plugin columns) works; role is simply absent."""
    conn = await asyncpg.connect(database)
    await seed.create_schema(conn, plugins=False)
    token = await seed.create_session(conn, await seed.create_user(conn, email="core@example.com"))
    await conn.close()
    async with gateway() as res:
        verdict = await res.decider.decide(cred(token))
    assert verdict.reason is Reason.ok
    assert verdict.session is not None
    assert "role" not in verdict.session.user
    assert verdict.session.banned_until == 0


async def test_drizzle_snake_case_naive_timestamps_are_utc(database: str, gateway: Open) -> None:
    """Drizzle's snake_case columns map back to camelCase fields; naive timestamps are UTC."""
    conn = await asyncpg.connect(database)
    await seed.create_schema(conn, "drizzle")
    await conn.execute("set timezone = 'America/New_York'")  # must not shift naive values
    uid = await seed.create_user(conn, email="snake@example.com", layout="drizzle", role="user")
    token = await seed.create_session(conn, uid, layout="drizzle", expires_in=dt.timedelta(hours=1))
    short = await seed.create_session(conn, uid, layout="drizzle", expires_in=dt.timedelta(seconds=-5))
    await conn.close()
    async with gateway(schema_preset="drizzle", plugins="admin,organization") as res:
        verdict = await res.decider.decide(cred(token))
        assert (await res.decider.decide(cred(short))).reason is Reason.expired
    assert verdict.reason is Reason.ok
    s = verdict.session
    assert s is not None
    assert set(s.session) >= {"id", "expiresAt", "userId", "ipAddress", "activeOrganizationId"}
    assert s.user["emailVerified"] is False
    assert abs(s.expires_at - (time.time() + 3600)) < 60


async def test_only_fields_better_auth_returns_are_read(db: asyncpg.Connection, gateway: Open) -> None:
    """Columns Better Auth does not declare (another app's, a plugin's left by a migration) are never
    read into an answer; the plugins named and the additional fields are; the role and a ban still
    decide when the admin plugin is not named, without being returned."""
    await db.execute("""alter table "user" add column "internalNote" text default 'not for clients',
                        add column "nickname" text default 'ada-nick'""")
    await db.execute("""alter table "session" add column "legacyFlag" boolean default true""")
    uid = await seed.create_user(db, email="ada@example.com", role="admin", banned=False)
    token = await seed.create_session(db, uid)
    await db.execute('update "session" set "activeOrganizationId" = $1', "org-1")
    banned = await seed.create_session(db, await seed.create_user(db, email="b@example.com", banned=True))
    core_user = {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt"}
    core_session = {"id", "expiresAt", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId"}
    async with gateway() as res:
        verdict = await res.decider.decide(cred(token))
        assert (await res.decider.decide(cred(banned))).reason is Reason.banned
        query = res.store._query if res.store else None
        sql = query.sql if query else ""
        assert query is not None
        assert {"user.internalNote", "user.role", "session.legacyFlag", "session.activeOrganizationId"} <= set(
            query.unreturned
        )  # and the log says so once
    assert verdict.session is not None
    assert set(verdict.session.user) == core_user
    assert set(verdict.session.session) == core_session
    assert verdict.session.role == "admin"
    for column in ("internalNote", "nickname", "legacyFlag", "activeOrganizationId", "banReason", "impersonatedBy"):
        assert column not in sql
    overrides = {
        "plugins": "admin,organization",
        "user_additional_fields": "nickname",
        "user_hidden_fields": "banReason",
    }
    async with gateway(**overrides) as res:
        verdict = await res.decider.decide(cred(token))
    assert verdict.session is not None
    assert set(verdict.session.user) == core_user | {"role", "banned", "banExpires", "nickname"}
    assert set(verdict.session.session) == core_session | {"impersonatedBy", "activeOrganizationId"}
    assert verdict.session.user["nickname"] == "ada-nick"
    assert verdict.session.session["activeOrganizationId"] == "org-1"


async def test_plural_tables_custom_columns_and_schema(database: str, gateway: Open) -> None:
    """usePlural, per-field overrides and a non-default Postgres schema all map."""
    conn = await asyncpg.connect(database)
    await conn.execute("""
        create schema auth;
        create table auth.users (id text primary key, name text, email text, "emailVerified" boolean,
          "createdAt" timestamptz, "updatedAt" timestamptz);
        create table auth.sessions (id text primary key, session_token text unique, owner text references auth.users,
          valid_until timestamptz, "createdAt" timestamptz, "updatedAt" timestamptz);
        insert into auth.users values ('u1', 'Plural', 'p@example.com', true, now(), now());
    """)
    token = seed.generate_id()
    await conn.execute(
        "insert into auth.sessions values ('s1', $1, 'u1', now() + interval '1 hour', now(), now())", token
    )
    await conn.close()
    overrides = {"token": "session_token", "userId": "owner", "expiresAt": "valid_until"}
    async with gateway(use_plural=True, db_schema="auth", session_fields=overrides) as res:
        verdict = await res.decider.decide(cred(token))
    assert verdict.reason is Reason.ok
    assert verdict.session is not None
    assert verdict.session.session["userId"] == "u1"
    assert verdict.session.session["expiresAt"].endswith("Z")


async def test_legacy_schema_session_id_is_the_token(database: str, gateway: Open) -> None:
    """The original guide's schema (session.id is the token, no FK) works with token_field=id."""
    conn = await asyncpg.connect(database)
    await conn.execute("""
        create table "user" (id text primary key, name text, email text);
        create table "session" (id text primary key, "userId" text, "expiresAt" timestamptz);
        insert into "user" values ('legacy-user', 'Old', 'old@example.com');
        insert into "session" values ('0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0', 'legacy-user', now() + interval '1 day');
        insert into "session" values ('orphan-session-id', 'no-such-user', now() + interval '1 day');
    """)
    await conn.close()
    async with gateway(token_field="id") as res:
        verdict = await res.decider.decide(header_credential("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"))
        orphan = await res.decider.decide(header_credential("orphan-session-id"))
    assert verdict.reason is Reason.ok
    assert verdict.session is not None
    assert verdict.session.user["email"] == "old@example.com"
    assert orphan.reason is Reason.unknown_session  # the user is gone: no join, no session


async def test_missing_table_names_the_setting(database: str, gateway: Open) -> None:
    """A database without Better Auth's tables fails closed with a message naming the setting."""
    async with gateway() as res:
        assert res.store is not None
        with pytest.raises(StoreUnavailable, match="GATEWAY_"):
            await res.store.ping()
        assert (await res.decider.decide(cred(seed.generate_id()))).reason is Reason.backend_unavailable


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",  # nothing listening
        "a" * 70 + ".example",  # a label over 63 characters: UnicodeError from the IDNA codec, no resolver asked
    ],
)
async def test_unreachable_postgres_is_unavailable_within_budget(gateway: Open, host: str) -> None:
    """With nothing listening, or a host no resolver takes, a lookup fails as backend_unavailable within budget."""
    dsn = f"postgresql://postgres@{host.format(port=free_port())}/postgres"
    # No start-up wait (by default 30 s of retries before serving 503s): the subject is the lookup.
    async with gateway(dsn=dsn, db_timeout_s=0.5, startup_wait_s=0) as res:
        started = time.monotonic()
        verdict = await res.decider.decide(cred(seed.generate_id()))
        assert time.monotonic() - started < 3
    assert verdict.reason is Reason.backend_unavailable


async def test_concurrent_misses_share_one_query(db: asyncpg.Connection, gateway: Open) -> None:
    """300 concurrent requests for one cold session cost one query; 300 forged ones cost none."""
    token = await seed.create_session(db, await seed.create_user(db, email="crowd@example.com"))
    async with gateway() as res:
        assert res.store is not None
        verdicts = await asyncio.gather(*(res.decider.decide(cred(token)) for _ in range(300)))
        assert {v.reason for v in verdicts} == {Reason.ok}
        assert res.store.queries == 1
        forged = sign(token, "not-the-secret-not-the-secret-000")
        verdicts = await asyncio.gather(*(res.decider.decide(header_credential(forged)) for _ in range(300)))
        assert {v.reason for v in verdicts} == {Reason.bad_signature}
        assert res.store.queries == 1


async def test_cache_hit_needs_no_query_and_respects_expiry(db: asyncpg.Connection, gateway: Open) -> None:
    """A second decision is served from the LRU; an entry never outlives the session's expiresAt."""
    uid = await seed.create_user(db, email="cache@example.com")
    # 10 s, not 1: the two decisions must come before it (after the pool opens, on a loaded machine).
    token = await seed.create_session(db, uid, expires_in=dt.timedelta(seconds=10))
    async with gateway(l1_ttl_s=3600) as res:
        assert res.store is not None
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        assert res.store.queries == 1
        res.tiers.l1.clock = lambda: time.time() + 11  # past expiresAt, well within the TTL
        assert (await res.decider.decide(cred(token))).reason is Reason.expired
        assert res.store.queries == 2


async def test_ban_without_expiry_is_forever(db: asyncpg.Connection, gateway: Open) -> None:
    """banned with no banExpires is a permanent ban."""
    uid = await seed.create_user(db, email="forever@example.com", banned=True)
    token = await seed.create_session(db, uid)
    async with gateway() as res:
        assert res.store is not None
        session = await res.store.fetch(token)
    assert session is not None
    assert math.isinf(session.banned_until)


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(
        min_value=dt.datetime(1, 1, 2),  # noqa: DTZ001  (hypothesis bounds are naive)
        max_value=dt.datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]),
    )
)
def test_dates_render_as_javascripts_to_iso_string(moment: dt.datetime) -> None:
    """Dates render as ``new Date(...).toISOString()``: UTC, milliseconds truncated, ``Z``."""
    utc = moment.astimezone(dt.UTC) if moment.tzinfo else moment
    expected = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond // 1000:03d}Z"
    )
    assert iso_string(moment) == expected
    assert json_value(moment) == expected


async def _validate_all(server: Any, client: Any, tokens: list[str]) -> list[int]:
    """Validate the tokens all at once (one loop tick: their uncached lookups share a batch)."""

    async def validate(token: str) -> int:
        response = await client.post(server.url + "/v1/validate", json={"token": sign(token, SECRET)})
        return int(response.status_code)

    return list(await asyncio.gather(*(validate(t) for t in tokens)))


async def test_a_deeply_nested_json_field_is_no_500_for_anyone(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: Any
) -> None:
    """Red team 13: a returned ``json`` field is the user's to write (update-user; ``z.json()``: any depth).

    Read back with a decoder that raised ``RecursionError`` past ~1,000 levels, it was a 500 with a
    traceback for the user and for every session looked up in the same batch (one ``= ANY($1)``
    query). Better Auth's ``JSON.parse`` reads it: so does the gateway (answered as stored).
    """
    await db.execute('alter table "user" add column prefs jsonb')
    attacker = await seed.create_user(db, email="deep@example.com")
    victim = await seed.create_user(db, email="bystander@example.com")
    deep = "[" * 3000 + "]" * 3000
    await db.execute('update "user" set prefs = $1::jsonb where id = $2', deep, attacker)
    attacker_token = await seed.create_session(db, attacker)
    victim_tokens = [await seed.create_session(db, victim) for _ in range(60)]
    server = start_gateway(
        {"DATABASE_URL": database, "GATEWAY_USER_ADDITIONAL_FIELDS": "prefs", "GATEWAY_LISTEN": "false"}
    )
    # The attacker's requests interleaved with the bystanders' first (uncached) lookups.
    statuses = await _validate_all(server, client, [t for v in victim_tokens for t in (attacker_token, v)])
    mine, theirs = statuses[0::2], statuses[1::2]
    assert set(theirs) == {200}, f"bystanders looked up in the same batch: {theirs.count(500)} of {len(theirs)} got 500"
    assert set(mine) == {200}, f"the user's own deep JSON: {sorted(set(mine))}"
    response = await client.post(server.url + "/v1/validate", json={"token": sign(attacker_token, SECRET)})
    assert response.content.count(b"[") == 3000  # the document as stored, verbatim
    assert "Traceback" not in server.output()


async def test_a_json_field_nested_just_under_the_stack_is_no_500(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: Any
) -> None:
    """Red team: nested just under the decoder's depth limit (the stack left where asyncpg decodes it).

    It decoded, then every recursive step after it ran on a deeper stack: msgspec's encoder for
    the answer (``/v1/validate``, get-session, a field header) and the LRU's ``==`` between two
    sessions of the user (``sharing_user``) raised ``RecursionError``, a 500 and a traceback on
    every request of the user's (the window, about 968-978 deep here, moves with the stack).
    """
    await db.execute('alter table "user" add column prefs jsonb')
    tokens = []
    for depth in range(900, 1001, 3):
        user = await seed.create_user(db, email=f"deep{depth}@example.com")
        await db.execute('update "user" set prefs = $1::jsonb where id = $2', "[" * depth + "]" * depth, user)
        tokens += [(depth, sign(await seed.create_session(db, user), SECRET)) for _ in range(2)]
    env = {"DATABASE_URL": database, "GATEWAY_USER_ADDITIONAL_FIELDS": "prefs", "GATEWAY_LISTEN": "false"}
    server = start_gateway(env | {"GATEWAY_FIELD_HEADERS": "user.prefs=x-prefs"})
    failed = []
    for depth, token in tokens:
        bearer = {"authorization": "Bearer " + token}
        for _ in range(2):  # looked up, then cached
            answers = [
                await client.post(server.url + "/v1/validate", json={"token": token}),
                await client.get(server.url + "/api/auth/get-session", headers=bearer),
                await client.get(server.url + "/validate", headers=bearer),
            ]
            failed += [(depth, str(a.url.path), a.status_code) for a in answers if a.status_code != 200]
            assert all(a.content.count(b"[") == depth for a in answers[:2] if a.status_code == 200)
    assert failed == []
    assert "Traceback" not in server.output()


async def test_a_date_field_past_year_9999_is_no_500_for_anyone(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: Any
) -> None:
    """Red team 13: a user-written ``date`` field in year 10000 (a valid ``timestamptz``; Better Auth answers it).

    asyncpg's own codec cannot make a ``datetime`` of it and raised ``OverflowError`` for the whole
    result: a 500 for the user and every session batched with theirs. It is answered as
    JavaScript's ``toISOString()`` renders it.
    """
    await db.execute('alter table "user" add column birthday timestamptz')
    attacker = await seed.create_user(db, email="far-future@example.com")
    victim = await seed.create_user(db, email="bystander2@example.com")
    await db.execute("""update "user" set birthday = '10000-01-01T00:00:00Z' where id = $1""", attacker)
    attacker_token = await seed.create_session(db, attacker)
    victim_tokens = [await seed.create_session(db, victim) for _ in range(60)]
    env = {"DATABASE_URL": database, "GATEWAY_USER_ADDITIONAL_FIELDS": "birthday", "GATEWAY_LISTEN": "false"}
    server = start_gateway(env)
    statuses = await _validate_all(server, client, [t for v in victim_tokens for t in (attacker_token, v)])
    mine, theirs = statuses[0::2], statuses[1::2]
    assert set(theirs) == {200}, f"bystanders looked up in the same batch: {theirs.count(500)} of {len(theirs)} got 500"
    assert set(mine) == {200}, f"the user's own far-future date: {sorted(set(mine))}"
    response = await client.post(server.url + "/v1/validate", json={"token": sign(attacker_token, SECRET)})
    assert response.json()["user"]["birthday"] == "+010000-01-01T00:00:00.000Z"  # new Date(...).toISOString()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("stored", "answered"),
    [
        ("'10000-01-01T00:00:00Z'", "+010000-01-01T00:00:00.000Z"),
        ("'0001-01-01T00:00:00Z'::timestamptz - interval '1 day'", "0000-12-31T00:00:00.000Z"),
        ("'0002-01-01 BC'", "-000001-01-01T00:00:00.000Z"),
        ("'275760-09-13T00:00:00.001Z'", None),  # past JavaScript's Date: toJSON() is null
        ("'infinity'", "9999-12-31T23:59:59.999Z"),  # as asyncpg's own codec (datetime.max)
    ],
    ids=["year 10000", "year 0", "year -1", "past JavaScript", "infinity"],
)
async def test_timestamps_outside_pythons_range_as_javascript_renders_them(
    db: asyncpg.Connection, gateway: Open, stored: str, answered: str | None
) -> None:
    """Every timestamp Postgres holds reads as ``toJSON()`` renders it, expiresAt included."""
    await db.execute('alter table "user" add column birthday timestamptz')
    user = await seed.create_user(db, email="dates@example.com")
    await db.execute(f'update "user" set birthday = {stored} where id = $1', user)  # noqa: S608  (constants)
    token = await seed.create_session(db, user)
    far = await seed.create_session(db, user)
    await db.execute("""update "session" set "expiresAt" = '10000-01-01Z' where token = $1""", far)
    async with gateway(user_additional_fields="birthday") as res:
        assert res.store is not None
        found = await res.store.fetch_many([token, far])
        assert found[token].user["birthday"] == answered
        assert found[far].expires_at == 253402300800.0  # year 10000: a session that is valid


@pytest.mark.parametrize(
    ("stored", "answered"),
    [
        ("'2020-01-01'", "2020-01-01T00:00:00.000Z"),
        ("'10000-01-01'", "+010000-01-01T00:00:00.000Z"),
        ("'0001-01-01 BC'", "0000-01-01T00:00:00.000Z"),
    ],
    ids=["2020", "year 10000", "year 0"],
)
async def test_a_date_column_reads_as_a_better_auth_in_utc_answers_it(
    db: asyncpg.Connection, gateway: Open, stored: str, answered: str
) -> None:
    """Red team, round 2, finding 6: node-postgres reads a ``date`` as a ``Date`` at local midnight,
    so Better Auth (in UTC) answers a timestamp, not a bare date; far years as ``toISOString()``."""
    await db.execute('alter table "user" add column birthday date')
    user = await seed.create_user(db, email="day@example.com")
    await db.execute(f'update "user" set birthday = {stored} where id = $1', user)  # noqa: S608  (constants)
    token = await seed.create_session(db, user)
    async with gateway(user_additional_fields="birthday") as res:
        assert res.store is not None
        found = await res.store.fetch_many([token])
        assert found[token].user["birthday"] == answered


@pytest.mark.parametrize("statement", [b"BEGIN", b"current_setting", b"COMMIT"])
async def test_a_link_lost_during_the_pooler_probe_is_unavailable_within_budget(
    database: str, gateway: Open, statement: bytes
) -> None:
    """A link dead past its login, at any statement of the pooler probe (``GATEWAY_DB_PGBOUNCER=auto``): 503s in time.

    The probe holds the pool's lock: a probe waiting for ever would have every lookup wait with it
    (and the start-up wait, which probes first).
    """
    proxy = await Proxy(database).start()
    proxy.stall_on = statement
    try:
        async with asyncio.timeout(10), gateway(dsn=proxy.dsn(), db_timeout_s=0.5, startup_wait_s=0) as res:
            started = time.monotonic()
            verdicts = await asyncio.gather(*(res.decider.decide(cred(seed.generate_id())) for _ in range(3)))
            assert time.monotonic() - started < 3
            assert {verdict.reason for verdict in verdicts} == {Reason.backend_unavailable}
    finally:
        await proxy.close()
