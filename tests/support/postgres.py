"""Databases of the tests' own on a real Postgres, the invalidation triggers, seeded sessions."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.postgres import seed


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def as_role(dsn: str, role: str, password: str) -> str:
    """``dsn`` logging in as ``role``: over TCP as configured, or over the embedded server's socket (no host part)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]  # "host:port", or "" where ?host= names a socket directory
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def create_database(admin_dsn: str, prefix: str = "gw_test_") -> str:
    """Create a new, empty database on ``admin_dsn``'s server; return its DSN."""
    name = prefix + secrets.token_hex(6)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names (made by ``create_database``), whoever is still connected."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


async def install_triggers(dsn: str, **overrides: object) -> None:
    """Install the invalidation triggers as ``gateway install-triggers`` does (``overrides``: settings)."""
    from gateway.config import load_settings  # noqa: PLC0415
    from gateway.postgres.admin import run_sql, trigger_sql  # noqa: PLC0415

    settings = load_settings({"DATABASE_URL": dsn}, overrides, need=frozenset({"database"}))
    await run_sql(settings, trigger_sql(settings))


async def seed_sessions(dsn: str, n: int) -> list[str]:
    """Better Auth's schema in ``dsn`` (if missing), one user, ``n`` live sessions; their tokens."""
    conn = await asyncpg.connect(dsn)
    try:
        await seed.create_schema(conn)
        uid = await seed.create_user(conn, email=f"{seed.generate_id(6)}@example.com")
        return [await seed.create_session(conn, uid) for _ in range(n)]
    finally:
        await conn.close()
