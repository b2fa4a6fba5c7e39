"""The member's role read with the session (one statement), and the member table's triggers, on a real Postgres."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from typing import TYPE_CHECKING

import asyncpg
import pytest

from gateway.config import load_settings
from gateway.core.errors import SchemaMismatch
from gateway.core.sessions import Reason
from gateway.credentials.tokens import token_hash
from gateway.lookup.refresh import Outcome
from gateway.postgres import seed
from gateway.postgres.installer import ensure_triggers
from gateway.postgres.plugin_triggers import member_names
from gateway.postgres.schema import mapping_from
from gateway.postgres.triggers import VERSION, install_sql, names
from tests.support.credentials import cred
from tests.support.postgres import install_triggers
from tests.support.resources import open_gateway
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.resources import Open

CHANNEL = "better_auth_gateway"
DAY = dt.timedelta(days=1)
# The organization plugin's tables as Better Auth 1.7 migrates them (default layout, and Drizzle's).
ORG_DDL = """
create table "organization" ("id" text not null primary key, "name" text not null, "slug" text not null unique,
  "logo" text, "createdAt" timestamptz not null, "metadata" text);
create table "member" ("id" text not null primary key,
  "organizationId" text not null references "organization" ("id") on delete cascade,
  "userId" text not null references "user" ("id") on delete cascade, "role" text not null,
  "createdAt" timestamptz not null);
"""
DRIZZLE_ORG_DDL = """
create table "organizations" ("id" text not null primary key, "name" text not null);
create table "members" ("id" text not null primary key, "organization_id" text not null,
  "user_id" text not null, "role" text not null, "created_at" timestamp not null);
"""


@pytest.fixture
async def orgs(db: asyncpg.Connection) -> asyncpg.Connection:
    """Better Auth's schema with the organization plugin's tables, and two organizations."""
    await db.execute(ORG_DDL)
    for org in ("acme", "globex"):
        await db.execute('insert into "organization" values ($1, $1, $1, null, now(), null)', org)
    return db


@pytest.fixture
def gateway(database: str) -> Open:
    return functools.partial(open_gateway, database, organizations="on", listen=False)


_INSERT_MEMBER = {
    "member": 'insert into "member" values ($1, $2, $3, $4, now())',
    "members": 'insert into "members" values ($1, $2, $3, $4, now())',
}
_SET_ACTIVE = {
    "default": 'update "session" set "activeOrganizationId" = $1 where "token" = $2',
    "drizzle": 'update "session" set "active_organization_id" = $1 where "token" = $2',
}


async def add_member(db: asyncpg.Connection, org: str, user: str, role: str, table: str = "member") -> str:
    member_id = seed.generate_id()
    await db.execute(_INSERT_MEMBER[table], member_id, org, user, role)
    return member_id


async def set_active(db: asyncpg.Connection, token: str, org: str | None, layout: str = "default") -> None:
    await db.execute(_SET_ACTIVE[layout], org, token)


async def test_the_role_is_read_with_the_session_in_one_statement(orgs: asyncpg.Connection, gateway: Open) -> None:
    """Active organization and role, for one token and a batch; none without an active org or membership."""
    ada = await seed.create_user(orgs, email="ada@example.com")
    bob = await seed.create_user(orgs, email="bob@example.com")
    await add_member(orgs, "acme", ada, "owner")
    await add_member(orgs, "globex", ada, "member,admin")
    await add_member(orgs, "acme", bob, "member")
    await add_member(orgs, "acme", bob, "member")  # Better Auth has no unique key on the pair
    at_acme, at_globex, nowhere, not_member, bob_token = [await seed.create_session(orgs, ada) for _ in range(4)] + [
        await seed.create_session(orgs, bob)
    ]
    await set_active(orgs, at_acme, "acme")
    await set_active(orgs, at_globex, "globex")
    await set_active(orgs, bob_token, "acme")
    await set_active(orgs, not_member, "initech")  # an organization the user is no member of
    async with gateway() as res:
        assert res.store is not None
        single = await res.store.fetch(at_acme)
        batch = await res.store.fetch_many([at_acme, at_globex, nowhere, not_member, bob_token])
        query = res.store._query
    assert query is not None
    assert query.sql.count("LEFT JOIN LATERAL") == 1
    assert '"member" AS gm' in query.sql
    assert single is not None
    assert (single.org_id, single.org_role) == ("acme", "owner")
    found = {token: (s.org_id, s.org_role) for token, s in batch.items()}
    assert found == {
        at_acme: ("acme", "owner"),
        at_globex: ("globex", "member,admin"),
        nowhere: (None, None),
        not_member: ("initech", None),
        bob_token: ("acme", "member"),  # one row despite two memberships
    }
    assert "activeOrganizationId" not in batch[at_acme].session  # not returned unless the plugin is named


async def test_off_reads_no_member_table(orgs: asyncpg.Connection, database: str) -> None:
    """Off (the default), the lookup is the plain session-user join: no extra join, no organization."""
    uid = await seed.create_user(orgs, email="ada@example.com")
    token = await seed.create_session(orgs, uid)
    await add_member(orgs, "acme", uid, "owner")
    await set_active(orgs, token, "acme")
    async with open_gateway(database, listen=False) as res:
        assert res.store is not None
        session = await res.store.fetch(token)
        query = res.store._query
    assert query is not None
    assert "member" not in query.sql
    assert session is not None
    assert (session.org_id, session.org_role) == (None, None)


async def test_drizzle_plural_and_custom_names(database: str) -> None:
    """snake_case and plural names with the drizzle preset; a custom member mapping; a missing table named."""
    conn = await asyncpg.connect(database)
    await seed.create_schema(conn, "drizzle")
    await conn.execute(DRIZZLE_ORG_DDL)
    uid = await seed.create_user(conn, email="snake@example.com", layout="drizzle")
    token = await seed.create_session(conn, uid, layout="drizzle")
    await add_member(conn, "acme", uid, "admin", table="members")
    await set_active(conn, token, "acme", layout="drizzle")
    await conn.close()
    async with open_gateway(
        database, schema_preset="drizzle", member_table="members", organizations="on", listen=False
    ) as res:
        verdict = await res.decider.decide(cred(token))
    assert verdict.session is not None
    assert (verdict.session.org_id, verdict.session.org_role) == ("acme", "admin")
    async with open_gateway(database, schema_preset="drizzle", organizations="on", listen=False) as res:
        assert res.store is not None
        with pytest.raises(SchemaMismatch, match="GATEWAY_MEMBER_TABLE"):
            await res.store.fetch(token)
    renamed = functools.partial(open_gateway, database, schema_preset="drizzle", organizations="on", listen=False)
    async with renamed(member_table="members", member_fields={"role": "grade"}) as res:
        assert res.store is not None
        with pytest.raises(SchemaMismatch, match=r"role \(column 'grade'\): map it with GATEWAY_MEMBER_FIELDS"):
            await res.store.fetch(token)


@pytest.fixture
async def notes(orgs: asyncpg.Connection, database: str) -> AsyncIterator[asyncio.Queue[str]]:
    """The triggers (organizations on) installed, and a LISTEN of the test's own."""
    await install_triggers(database, organizations="on")
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database)
    await conn.add_listener(CHANNEL, lambda *args: queue.put_nowait(args[-1]))
    yield queue
    await conn.close()


async def drain(queue: asyncio.Queue[str]) -> set[str]:
    """What arrives until the channel is quiet for 0.3 s."""
    got: set[str] = set()
    while True:
        try:
            got.add(await asyncio.wait_for(queue.get(), 0.3))
        except TimeoutError:
            return got


async def test_membership_changes_notify_by_user(orgs: asyncpg.Connection, notes: asyncio.Queue[str]) -> None:
    """Added, role changed, moved, removed, organization deleted, truncated, set active: each is heard."""
    ada = await seed.create_user(orgs, email="ada@example.com")
    bob = await seed.create_user(orgs, email="bob@example.com")
    token = await seed.create_session(orgs, ada)
    member = await add_member(orgs, "acme", ada, "member")
    assert await drain(notes) == {f"u:{ada}"}
    await orgs.execute('update "member" set "role" = $1 where "id" = $2', "admin", member)
    assert await drain(notes) == {f"u:{ada}"}
    await orgs.execute('update "member" set "userId" = $1 where "id" = $2', bob, member)
    assert await drain(notes) == {f"u:{ada}", f"u:{bob}"}
    await orgs.execute('delete from "member" where "id" = $1', member)
    assert await drain(notes) == {f"u:{bob}"}
    await add_member(orgs, "globex", ada, "owner")
    await add_member(orgs, "globex", bob, "member")
    await drain(notes)
    await orgs.execute("delete from \"organization\" where id = 'globex'")  # members go by cascade
    assert await drain(notes) == {f"u:{ada}", f"u:{bob}"}
    await add_member(orgs, "acme", ada, "owner")
    await add_member(orgs, "acme", bob, "member")
    await drain(notes)
    await orgs.execute('truncate "member"')
    assert await drain(notes) == {f"u:{ada}", f"u:{bob}"}  # each user, never a '*' to prove
    await set_active(orgs, token, "acme")  # set-active: the session trigger already says it
    assert await drain(notes) == {f"s:{token_hash(token)}"}


async def test_an_installed_v1_upgrades_with_the_member_triggers(orgs: asyncpg.Connection, database: str) -> None:
    """v1 on the tables: the member triggers are wanted, so a start with organizations on upgrades to this version."""
    settings = load_settings({"DATABASE_URL": database, "GATEWAY_ORGANIZATIONS": "on"}, need=frozenset({"database"}))
    off = load_settings({"DATABASE_URL": database}, need=frozenset({"database"}))
    await orgs.execute(install_sql(mapping_from(off), off.channel, version=1))
    outcome = await ensure_triggers(settings)
    assert outcome.message == f"upgraded from v1 to v{VERSION}"
    rows = await orgs.fetch("select tgname, tgrelid::regclass::text from pg_trigger where tgname like 'gateway%'")
    found = {(name, table) for name, table in rows}
    assert {name for name, _ in found} == set(names()) | set(member_names(VERSION))
    assert {(name, "member") for name in member_names(VERSION)} <= found
    assert (await ensure_triggers(settings)).message == f"already current (v{VERSION})"
    # Installed without them (organizations off), they are missing once it is on: installed then.
    await orgs.execute(f'drop trigger {member_names(VERSION)[0]} on "member"')
    assert (await ensure_triggers(off)).message == f"already current (v{VERSION})"
    assert (await ensure_triggers(settings)).message == f"installed v{VERSION}"


async def test_a_role_change_evicts_the_cached_session(orgs: asyncpg.Connection, database: str) -> None:
    """With the listener: a cached session's role is read again at once after a change in the member table."""
    uid = await seed.create_user(orgs, email="ada@example.com")
    token = await seed.create_session(orgs, uid)
    member = await add_member(orgs, "acme", uid, "member")
    await set_active(orgs, token, "acme")
    await install_triggers(database, organizations="on")
    async with open_gateway(database, organizations="on") as res:
        await eventually(lambda: res.listener is not None and res.listener.connected)
        first = await res.decider.decide(cred(token))
        assert first.session is not None
        assert first.session.org_role == "member"
        assert (await res.decider.decide(cred(token))).session == first.session  # cached
        await orgs.execute('update "member" set "role" = $1 where "id" = $2', "admin", member)

        async def promoted() -> bool:
            verdict = await res.decider.decide(cred(token))
            assert verdict.reason is Reason.ok
            return verdict.session is not None and verdict.session.org_role == "admin"

        await eventually(promoted, within=1)


async def test_a_due_session_slides_with_organizations_on(orgs: asyncpg.Connection, gateway: Open) -> None:
    """Red team: the slide's UPDATE read the member's role without its join, so with organizations on no session slid.

    Postgres refused the statement (no ``gw_member`` in its FROM), every due request was answered
    unslid after a failed query, and Better Auth's users were signed out after ``expiresIn``.
    """
    ada = await seed.create_user(orgs, email="slide-org@example.com")
    await add_member(orgs, "acme", ada, "owner")
    token = await seed.create_session(orgs, ada)
    await set_active(orgs, token, "acme")
    now = seed.now()
    sql = 'UPDATE "session" SET "expiresAt" = $2, "updatedAt" = $3 WHERE token = $1'
    await orgs.execute(sql, token, now + 5 * DAY, now - 2 * DAY)
    async with gateway() as res:
        verdict = await res.decider.decide(cred(token))
        assert verdict.session is not None
        assert res.refresher is not None
        refreshed = await res.refresher.refresh(cred(token).key, token, token_hash(token), verdict.session)
    assert refreshed.outcome is Outcome.written
    assert refreshed.session is not None
    assert (refreshed.session.org_id, refreshed.session.org_role) == ("acme", "owner")
    expires = await orgs.fetchval('SELECT "expiresAt" FROM "session" WHERE token = $1', token)
    assert expires > now + 6 * DAY
