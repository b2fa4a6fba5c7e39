"""Better Auth's schema, and users and sessions made the way Better Auth makes them.

Used by the demo, the tests and the load tests.
The DDL is Better Auth 1.7's own (``getMigrations(...).compileMigrations()``, quoted camelCase,
``timestamptz``), optionally with the admin and organization plugins' columns; ``drizzle`` is the
snake_case layout its Drizzle generator emits (timestamps without time zone, read as UTC).
"""

from __future__ import annotations

import datetime as dt
import secrets
import string
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import asyncpg

Layout = Literal["default", "drizzle"]

DEFAULT_DDL = """
create table if not exists "user" ("id" text not null primary key, "name" text not null,
  "email" text not null unique, "emailVerified" boolean not null, "image" text,
  "createdAt" timestamptz default CURRENT_TIMESTAMP not null,
  "updatedAt" timestamptz default CURRENT_TIMESTAMP not null);
create table if not exists "session" ("id" text not null primary key, "expiresAt" timestamptz not null,
  "token" text not null unique, "createdAt" timestamptz default CURRENT_TIMESTAMP not null,
  "updatedAt" timestamptz not null, "ipAddress" text, "userAgent" text,
  "userId" text not null references "user" ("id") on delete cascade);
create index if not exists "session_userId_idx" on "session" ("userId");
"""

PLUGINS_DDL = """
alter table "user" add column if not exists "role" text, add column if not exists "banned" boolean,
  add column if not exists "banReason" text, add column if not exists "banExpires" timestamptz;
alter table "session" add column if not exists "impersonatedBy" text,
  add column if not exists "activeOrganizationId" text;
"""

DRIZZLE_DDL = """
create table if not exists "user" ("id" text not null primary key, "name" text not null,
  "email" text not null unique, "email_verified" boolean not null, "image" text,
  "created_at" timestamp not null default now(), "updated_at" timestamp not null default now(),
  "role" text, "banned" boolean, "ban_reason" text, "ban_expires" timestamp);
create table if not exists "session" ("id" text not null primary key, "expires_at" timestamp not null,
  "token" text not null unique, "created_at" timestamp not null default now(),
  "updated_at" timestamp not null, "ip_address" text, "user_agent" text,
  "user_id" text not null references "user" ("id") on delete cascade,
  "impersonated_by" text, "active_organization_id" text);
create index if not exists "session_userId_idx" on "session" ("user_id");
"""

_ALPHABET = string.ascii_letters + string.digits


def generate_id(length: int = 32) -> str:
    """Better Auth's ``generateId``: ``length`` characters of ``[a-zA-Z0-9]``."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> dt.datetime:
    """The current time, truncated to milliseconds as JavaScript Dates are."""
    t = dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


async def create_schema(conn: asyncpg.Connection, layout: Layout = "default", *, plugins: bool = True) -> None:
    """Create the user and session tables (idempotent), with the plugin columns unless told not to.

    The drizzle layout always has them.
    """
    if layout == "drizzle":
        await conn.execute(DRIZZLE_DDL)
        return
    await conn.execute(DEFAULT_DDL)
    if plugins:
        await conn.execute(PLUGINS_DDL)


def _columns(layout: Layout, *names: str) -> str:
    from gateway.postgres.schema import quote, snake  # noqa: PLC0415

    return ", ".join(quote(snake(n) if layout == "drizzle" else n) for n in names)


def _stamp(value: dt.datetime, layout: Layout) -> dt.datetime:
    return value.replace(tzinfo=None) if layout == "drizzle" else value


async def create_user(
    conn: asyncpg.Connection,
    *,
    email: str,
    name: str = "Demo User",
    layout: Layout = "default",
    **plugin_fields: object,
) -> str:
    """Insert a user as Better Auth's sign-up does; return its id.

    ``plugin_fields`` sets plugin columns by field name (``role="admin"``, ``banned=True``).
    """
    user_id, t = generate_id(), _stamp(now(), layout)
    extra = {k: _stamp(v, layout) if isinstance(v, dt.datetime) else v for k, v in plugin_fields.items()}
    cols = _columns(layout, "id", "name", "email", "emailVerified", "createdAt", "updatedAt", *extra)
    params = ", ".join(f"${i}" for i in range(5, 5 + len(extra)))
    await conn.execute(
        f'insert into "user" ({cols}) values ($1, $2, $3, false, $4, $4{", " if extra else ""}{params})',  # noqa: S608  (identifiers are quoted constants)
        user_id,
        name,
        email,
        t,
        *extra.values(),
    )
    return user_id


async def create_session(
    conn: asyncpg.Connection,
    user_id: str,
    *,
    expires_in: dt.timedelta = dt.timedelta(days=7),
    layout: Layout = "default",
) -> str:
    """Insert a session as Better Auth's sign-in does; return its token (never its id)."""
    token, t = generate_id(), now()
    cols = _columns(layout, "id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId")
    await conn.execute(
        f"insert into \"session\" ({cols}) values ($1, $2, $3, $4, $4, '', '', $5)",  # noqa: S608  (constant identifiers)
        generate_id(),
        _stamp(t + expires_in, layout),
        token,
        _stamp(t, layout),
        user_id,
    )
    return token
