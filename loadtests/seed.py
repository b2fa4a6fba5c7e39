"""Seed, and later remove, the sessions a load test uses, in the database Better Auth writes to.

    python -m loadtests.seed create --out DIR/seed.json [--users 50] [--sessions-per-user 40]
    python -m loadtests.seed drop DIR/seed.json

``DATABASE_URL`` names the database: Better Auth's, where its migrations made the ``"user"`` and
``"session"`` tables. The seeder never creates, alters or drops a table: where the tables or the
columns it writes are missing (or another column would need a value), it refuses and says why,
before writing anything. The users are inserted as Better Auth's sign-up does, in one transaction,
with e-mail addresses under ``example.invalid`` and a run id; ``drop`` deletes exactly their
sessions and them, so every row the load test added goes. The file holds the tokens, so it stays
in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg

from gateway.postgres import seed

# The columns seed.create_user and seed.create_session write (Better Auth's default layout).
WRITES = {
    "user": {"id", "name", "email", "emailVerified", "createdAt", "updatedAt"},
    "session": {"id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId"},
}
_COLUMNS_SQL = """
select table_name, column_name, is_nullable = 'NO' and column_default is null
from information_schema.columns where table_schema = current_schema() and table_name = any($1::text[])
"""


class Refused(Exception):
    """The database is not one the seeder may write to as it is; the message says why."""


async def check_schema(conn: asyncpg.Connection) -> None:
    """Refuse unless Better Auth's tables are there with every column the seeder writes.

    Raises:
        Refused: a table or column is missing, or a column the seeder leaves out needs a value.
    """
    found: dict[str, dict[str, bool]] = {table: {} for table in WRITES}
    for table, column, required in await conn.fetch(_COLUMNS_SQL, list(WRITES)):
        found[table][column] = required
    database, schema = await conn.fetchrow("select current_database(), current_schema()")
    if missing := [f'"{table}"' for table, columns in found.items() if not columns]:
        raise Refused(
            f"database {database!r} has no Better Auth table {' or '.join(missing)} (schema {schema!r}): run "
            "Better Auth's migrations there first, or point DATABASE_URL at the database Better Auth uses "
            "(the seeder never creates or alters tables)"
        )
    problems = []
    for table, columns in found.items():
        if absent := sorted(WRITES[table] - columns.keys()):
            problems.append(f'"{table}" lacks {", ".join(absent)} (the seeder writes Better Auth\'s default layout)')
        if unfilled := sorted(c for c, required in columns.items() if required and c not in WRITES[table]):
            problems.append(f'"{table}" needs values the seeder does not write: {", ".join(unfilled)}')
    if problems:
        raise Refused(f"database {database!r}: " + "; ".join(problems) + " (the seeder never alters tables)")


async def create(dsn: str, users: int, per_user: int) -> dict[str, Any]:
    """Insert ``users`` users with ``per_user`` live sessions each, all or none; return their ids and tokens.

    Raises:
        Refused: the database lacks Better Auth's tables as the seeder writes them (nothing written).
    """
    run = seed.generate_id(8).lower()
    conn = await asyncpg.connect(dsn)
    try:
        await check_schema(conn)
        accounts = []
        async with conn.transaction():
            for i in range(users):
                user_id = await seed.create_user(conn, email=f"loadtest-{run}-{i}@example.invalid", name=f"Load {i}")
                tokens = [await seed.create_session(conn, user_id) for _ in range(per_user)]
                accounts.append({"user_id": user_id, "tokens": tokens})
    finally:
        await conn.close()
    print(f"seeded {users} users with {users * per_user} sessions (run {run})")
    return {"run": run, "accounts": accounts}


async def drop(dsn: str, seeded: dict[str, Any]) -> None:
    """Delete the sessions and the users of a seed (the sessions first: no reliance on a cascade)."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [a["user_id"] for a in seeded["accounts"]]
        async with conn.transaction():
            sessions = await conn.execute('delete from "session" where "userId" = any($1)', ids)
            result = await conn.execute('delete from "user" where "id" = any($1)', ids)
    finally:
        await conn.close()
    print(f"removed the load test's users ({result}) and their remaining sessions ({sessions})")


def main() -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--users", type=int, default=50)
    c.add_argument("--sessions-per-user", type=int, default=40)
    d = sub.add_parser("drop")
    d.add_argument("file", type=Path)
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("loadtests.seed: DATABASE_URL is not set", file=sys.stderr)
        return 2
    if args.command == "create":
        try:
            seeded = asyncio.run(create(dsn, args.users, args.sessions_per_user))
        except Refused as exc:
            print(f"loadtests.seed: refused: {exc}", file=sys.stderr)
            return 2
        args.out.write_text(json.dumps(seeded))
    else:
        asyncio.run(drop(dsn, json.loads(args.file.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
