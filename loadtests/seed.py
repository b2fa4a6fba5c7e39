"""Seed, and later remove, the sessions a load test uses, in the database Better Auth writes to.

    python -m loadtests.seed create --out DIR/seed.json [--users 50] [--sessions-per-user 40]
    python -m loadtests.seed drop DIR/seed.json

``DATABASE_URL`` names the database. The users are inserted as Better Auth's sign-up does, with
e-mail addresses under ``example.invalid`` and a run id, so ``drop`` removes exactly them (their
sessions go with them: ``ON DELETE CASCADE``). The file holds the tokens, so it stays in DIR.
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


async def create(dsn: str, users: int, per_user: int) -> dict[str, Any]:
    """Insert ``users`` users with ``per_user`` live sessions each; return their ids and tokens."""
    run = seed.generate_id(8).lower()
    conn = await asyncpg.connect(dsn)
    try:
        await seed.create_schema(conn)  # a no-op where Better Auth's tables exist
        accounts = []
        for i in range(users):
            user_id = await seed.create_user(conn, email=f"loadtest-{run}-{i}@example.invalid", name=f"Load {i}")
            tokens = [await seed.create_session(conn, user_id) for _ in range(per_user)]
            accounts.append({"user_id": user_id, "tokens": tokens})
    finally:
        await conn.close()
    print(f"seeded {users} users with {users * per_user} sessions (run {run})")
    return {"run": run, "accounts": accounts}


async def drop(dsn: str, seeded: dict[str, Any]) -> None:
    """Delete the users of a seed, and with them their sessions."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [a["user_id"] for a in seeded["accounts"]]
        result = await conn.execute('delete from "user" where "id" = any($1)', ids)
    finally:
        await conn.close()
    print(f"removed the load test's users: {result}")


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
        seeded = asyncio.run(create(dsn, args.users, args.sessions_per_user))
        args.out.write_text(json.dumps(seeded))
    else:
        asyncio.run(drop(dsn, json.loads(args.file.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
