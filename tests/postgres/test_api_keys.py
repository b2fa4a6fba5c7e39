"""The API key table in Postgres: the lookup, the trigger block (what it says, what not), upgrade, check-config.

The table is the one ``@better-auth/api-key`` 1.7.5 migrates (its columns and types, as read from
a real migration); tests/e2e/test_api_keys.py runs the same against the plugin itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import asyncpg

from gateway.config import load_settings
from gateway.credentials.api_keys import key_digest, stored_key
from gateway.postgres import seed
from gateway.postgres.admin import check_database
from gateway.postgres.api_keys import ApiKeyStore
from gateway.postgres.installer import ensure_triggers
from gateway.postgres.plugin_triggers import api_key_names
from gateway.postgres.schema import mapping_from
from gateway.postgres.store import Store
from gateway.postgres.triggers import VERSION, install_sql, names
from tests.support.postgres import as_role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

APIKEY_DDL = """create table "apikey" ("id" text not null primary key, "configId" text not null,
"name" text, "start" text, "referenceId" text not null, "prefix" text, "key" text not null,
"refillInterval" integer, "refillAmount" integer, "lastRefillAt" timestamptz, "enabled" boolean,
"rateLimitEnabled" boolean, "rateLimitTimeWindow" integer, "rateLimitMax" integer,
"requestCount" integer, "remaining" integer, "lastRequest" timestamptz, "expiresAt" timestamptz,
"createdAt" timestamptz not null, "updatedAt" timestamptz not null, "permissions" text, "metadata" text)"""
KEY = "Q" * 64


async def make_key(db: asyncpg.Connection, user_id: str, key: str = KEY, **columns: object) -> str:
    """A row as the plugin's createApiKey writes it (its defaults), with ``columns`` changed; its id."""
    now = dt.datetime.now(dt.UTC)
    row: dict[str, object] = {
        "id": seed.generate_id(),
        "configId": "default",
        "referenceId": user_id,
        "key": stored_key(key),
        "enabled": True,
        "rateLimitEnabled": True,
        "rateLimitTimeWindow": 86_400_000,
        "rateLimitMax": 10,
        "requestCount": 0,
        "createdAt": now,
        "updatedAt": now,
    } | columns
    names_ = ", ".join(f'"{k}"' for k in row)
    marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await db.execute(f"insert into apikey ({names_}) values ({marks})", *row.values())  # noqa: S608
    return str(row["id"])


async def schema(dsn: str) -> tuple[asyncpg.Connection, str]:
    db = await asyncpg.connect(dsn)
    await seed.create_schema(db)
    await db.execute(APIKEY_DDL)
    return db, await seed.create_user(db, email=f"{seed.generate_id(6)}@example.com")


async def notifications(db: asyncpg.Connection, channel: str) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    heard: list[str] = []
    await db.add_listener(channel, lambda *args: heard.append(args[3]))

    async def settle() -> None:
        await asyncio.sleep(0.2)

    return heard, settle


async def test_the_trigger_block_says_what_changes_a_verdict_and_nothing_else(database: str) -> None:
    settings = load_settings({"DATABASE_URL": database, "GATEWAY_API_KEYS": "on"}, need=frozenset({"database"}))
    db, user = await schema(database)
    listener = await asyncpg.connect(database)
    try:
        assert (await ensure_triggers(settings)).current
        heard, settle = await notifications(listener, settings.channel)
        key_id = await make_key(db, user)
        digest = f"k:{key_digest(stored_key(KEY))}"
        # A use through Better Auth: the usage columns alone say nothing.
        await db.execute(
            'update apikey set "requestCount" = 1, "lastRequest" = now(), "updatedAt" = now() where id = $1', key_id
        )
        await db.execute('update apikey set "remaining" = 5 where id = $1', key_id)
        await settle()
        assert heard == []
        # A use that spends the key, a change of what a verdict reads, a delete: each names the key's digest.
        await db.execute('update apikey set "remaining" = 0 where id = $1', key_id)
        await db.execute('update apikey set "requestCount" = 10 where id = $1', key_id)  # rateLimitMax reached
        await db.execute('update apikey set "enabled" = false where id = $1', key_id)
        await db.execute('update apikey set "expiresAt" = now() where id = $1', key_id)
        await db.execute("delete from apikey where id = $1", key_id)
        await settle()
        assert heard == [digest] * 5
        # rateLimitMax 1: a new window writes requestCount 1 over 1, the window spent again.
        heard.clear()
        one = await make_key(db, user, rateLimitMax=1, requestCount=1)
        await db.execute('update apikey set "requestCount" = 1, "lastRequest" = now() where id = $1', one)
        await settle()
        assert heard == [digest]
        assert all(KEY not in p and stored_key(KEY) not in p for p in heard)  # neither the key nor its hash
        await db.execute("truncate apikey")
        await settle()
        assert heard[-1] == "k:*"
    finally:
        await listener.close()
        await db.close()


async def test_installed_v1_upgrades_to_this_version_with_the_api_key_block(database: str) -> None:
    """A gateway turned on for API keys upgrades an older install in one step (the old objects dropped)."""
    db, _ = await schema(database)
    try:
        off = load_settings({"DATABASE_URL": database}, need=frozenset({"database"}))
        await db.execute(install_sql(mapping_from(off), off.channel, version=1))
        on = load_settings({"DATABASE_URL": database, "GATEWAY_API_KEYS": "on"}, need=frozenset({"database"}))
        outcome = await ensure_triggers(on)
        assert (outcome.current, outcome.message) == (True, f"upgraded from v1 to v{VERSION}")
        found = {r[0] for r in await db.fetch("select tgname from pg_trigger where tgname like 'gateway%'")}
        assert found == set(names()) | set(api_key_names(VERSION))
        assert (await ensure_triggers(on)).message == f"already current (v{VERSION})"
        # Without GATEWAY_API_KEYS the block is not wanted: the same install is current too.
        assert (await ensure_triggers(off)).message == f"already current (v{VERSION})"
    finally:
        await db.close()


async def test_check_config_wants_the_table_when_api_keys_are_on(database: str) -> None:
    db = await asyncpg.connect(database)
    try:
        await seed.create_schema(db)
        on = load_settings({"DATABASE_URL": database, "GATEWAY_API_KEYS": "on"}, need=frozenset({"database"}))
        problems = [f.text for f in await check_database(on) if f.level == "problem"]
        assert len(problems) == 1
        assert 'table "apikey" not found' in problems[0]
        await db.execute(APIKEY_DDL)
        findings = await check_database(on)
        assert [f for f in findings if f.level == "problem"] == []
        assert any('"apikey" have the mapped columns' in f.text for f in findings)
    finally:
        await db.close()


async def test_check_config_names_a_plugin_table_the_role_may_not_put_triggers_on(database: str) -> None:
    """The API key table carries triggers too: a role without TRIGGER on it can't install them, and is told which."""
    db, _ = await schema(database)
    role = "gw_keys_" + seed.generate_id(6).lower()
    await db.execute(f"create role {role} login password 'keys'")
    try:
        await db.execute(f"grant create on schema public to {role}")
        await db.execute(f'grant select, trigger on "session", "user" to {role}')
        await db.execute(f"grant select on apikey to {role}")
        keyed = as_role(database, role, "keys")
        on = load_settings({"DATABASE_URL": keyed, "GATEWAY_API_KEYS": "on"}, need=frozenset({"database"}))
        warned = [f.text for f in await check_database(on) if f.level == "warning" and "triggers" in f.text]
        assert len(warned) == 1
        assert 'may not install them (no TRIGGER privilege on "apikey")' in warned[0]
        off = load_settings({"DATABASE_URL": keyed}, need=frozenset({"database"}))  # no apikey triggers wanted
        assert any("will install them at startup" in f.text for f in await check_database(off))
        await db.execute(f"grant trigger on apikey to {role}")
        assert any("will install them at startup" in f.text for f in await check_database(on))
    finally:
        await db.execute(f"drop owned by {role}")
        await db.execute(f"drop role {role}")
        await db.close()


async def test_the_lookup_reads_the_row_and_its_user(database: str) -> None:
    settings = load_settings(
        {"DATABASE_URL": database, "GATEWAY_API_KEYS": "on", "GATEWAY_PLUGINS": "admin"}, need=frozenset({"database"})
    )
    db, user = await schema(database)
    store = Store(settings, mapping_from(settings))
    await store.open()
    try:
        expires = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
        key_id = await make_key(db, user, remaining=3, expiresAt=expires)
        await db.execute('update "user" set banned = true where id = $1', user)
        keys = ApiKeyStore(store, settings, mapping_from(settings))
        found = await keys.fetch(stored_key(KEY))
        assert found is not None
        assert (found.id, found.user_id, found.remaining, found.rate_limit_max) == (key_id, user, 3, 10)
        assert found.expires_at_iso == "2030-01-02T03:04:05.678Z"
        assert found.banned_until == float("inf")
        assert found.user["id"] == user
        assert found.user["banned"] is True  # admin named: Better Auth returns it
        assert await keys.fetch(stored_key("R" * 64)) is None
        assert await keys.fetch(KEY) is None  # the column holds the hash, not the key
    finally:
        await store.close()
        await db.close()
