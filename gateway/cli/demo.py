"""``gateway demo``: a working gateway in one command, on an embedded Postgres if need be.

Where no ``DATABASE_URL`` is set, PostgreSQL comes from the ``pgserver`` package (real binaries)
with its data in the per-user data folder, so the demo user and session survive restarts.

Better Auth's tables are created only in a database the demo owns: its embedded one, or an empty
one named by ``DATABASE_URL`` (the tables it makes there carry a mark, so a restart reuses them).
A database with tables the demo did not make is refused untouched: ``seed.create_schema`` would
add plugin columns to them, and the demo rows would join real ones.

Like ``serve``, it installs the invalidation triggers at startup, and prints how to watch a
revocation: the curl that validates, the SQL that signs the session out, the same curl refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import sys
import warnings
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import platformdirs

from gateway.cli.serve import serve, settings_or_none
from gateway.credentials.tokens import sign
from gateway.postgres import seed

if TYPE_CHECKING:
    from pathlib import Path

DEMO_EMAIL = "demo@example.com"
_MARK = "created by gateway demo"
_TABLES_SQL = """select coalesce(obj_description(to_regclass('"session"'), 'pg_class'), '<none>'),
  to_regclass('"session"') is not null or to_regclass('"user"') is not null"""


class NotOurs(Exception):
    """The database has tables the demo did not make: it leaves them alone."""


def data_dir() -> Path:
    """The per-user folder holding the embedded database and the demo secret."""
    path = platformdirs.user_data_path("better-auth-gateway")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _demo_secret(folder: Path) -> str:
    """A random secret made once and kept beside the data, so demo cookies stay valid."""
    path = folder / "demo-secret"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


async def _seed(dsn: str, *, embedded: bool) -> tuple[str, str]:
    """Create Better Auth's schema and a demo user with a live session; return its token and id.

    ``embedded``: the demo's own server, whose tables are its own (marked or not: earlier demos
    did not mark them).

    Raises:
        NotOurs: the database has Better Auth's tables (or one of them), not made by the demo.
    """
    conn = await asyncpg.connect(dsn)
    try:
        mark, exists = await conn.fetchrow(_TABLES_SQL)
        if exists and mark != _MARK and not embedded:
            raise NotOurs
        if not exists or embedded:
            async with conn.transaction():
                await seed.create_schema(conn)
                await conn.execute(f"comment on table \"session\" is '{_MARK}'")
        user_id = await conn.fetchval('select "id" from "user" where "email" = $1', DEMO_EMAIL)
        if user_id is None:
            user_id = await seed.create_user(conn, email=DEMO_EMAIL, name="Demo User", role="user", banned=False)
        live = await conn.fetchval(
            'select "token" from "session" where "userId" = $1 and "expiresAt" > now() + interval \'1 day\' limit 1',
            user_id,
        )
        token = live or await seed.create_session(conn, user_id)
        return token, await conn.fetchval('select "id" from "session" where "token" = $1', token)
    finally:
        await conn.close()


def run_demo(host: str | None, port: int | None, workers: int | None) -> int:
    """Start (or reuse) Postgres, seed it, print a curl command, serve until Ctrl-C."""
    folder = data_dir()
    os.environ.setdefault("BETTER_AUTH_SECRET", _demo_secret(folder))
    with contextlib.ExitStack() as stack:
        embedded, psql = not os.environ.get("DATABASE_URL"), "psql"
        if embedded:
            # pgserver asks for a runtime folder, which containers lack; its fallback is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pgserver import get_server  # type: ignore[attr-defined]  # noqa: PLC0415  (only the demo needs the embedded server)
            from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

            psql = shutil.which("psql") or str(POSTGRES_BIN_PATH / "psql")  # pgserver brings one
            server = get_server(folder / "pgdata", cleanup_mode="stop")
            stack.callback(server.cleanup)
            os.environ["DATABASE_URL"] = server.get_uri()
            print(f"embedded PostgreSQL: data in {folder / 'pgdata'}", file=sys.stderr)  # noqa: T201
        overrides = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
        settings = settings_or_none(overrides)
        if settings is None:
            return 2
        try:
            token, session_id = asyncio.run(_seed(os.environ["DATABASE_URL"], embedded=embedded))
        except NotOurs:
            print(  # noqa: T201
                "gateway demo: DATABASE_URL's database has Better Auth's tables the demo did not make; "
                "it will not alter them or add demo rows. Unset DATABASE_URL (an embedded Postgres "
                "is started) or point it at an empty database.",
                file=sys.stderr,
            )
            return 2
        cookie = f"{settings.cookie_names[0]}={quote(sign(token, settings.secret.reveal()), safe='')}"
        url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"  # noqa: S104
        print(f"demo user {DEMO_EMAIL}; validate its session with:", file=sys.stderr)  # noqa: T201
        print(f"curl -i -H 'Cookie: {cookie}' {url}/validate", flush=True)  # noqa: T201
        _print_revocation(psql, os.environ["DATABASE_URL"] if embedded else "$DATABASE_URL", session_id)
        return serve(settings)


def _print_revocation(psql: str, dsn: str, session_id: str) -> None:
    """How to watch a revocation: sign the session out as Better Auth does, then curl again."""
    literal = session_id.replace("'", "''")
    sql = f'delete from "session" where "id" = \'{literal}\''  # noqa: S608  (a literal, quoted)
    print("then sign it out, as Better Auth's sign-out does (it deletes the session row):", file=sys.stderr)  # noqa: T201
    print(f"{shlex.quote(psql)} {shlex.quote(dsn)} -c {shlex.quote(sql)}", flush=True)  # noqa: T201
    print(  # noqa: T201
        "and run the curl again: 401, from every worker, within milliseconds (the invalidation triggers "
        "tell the gateway); `gateway demo` again makes a new session",
        file=sys.stderr,
        flush=True,
    )
