"""``gateway demo``: a working gateway in one command, on an embedded Postgres if need be.

Where no ``DATABASE_URL`` is set, PostgreSQL comes from the ``pgserver`` package (real binaries)
with its data in the per-user data folder, so the demo user and session survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
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


async def _seed(dsn: str) -> str:
    """Create Better Auth's schema and a demo user with a live session; return its token."""
    conn = await asyncpg.connect(dsn)
    try:
        await seed.create_schema(conn)
        user_id = await conn.fetchval('select "id" from "user" where "email" = $1', DEMO_EMAIL)
        if user_id is None:
            user_id = await seed.create_user(conn, email=DEMO_EMAIL, name="Demo User", role="user", banned=False)
        live = await conn.fetchval(
            'select "token" from "session" where "userId" = $1 and "expiresAt" > now() + interval \'1 day\' limit 1',
            user_id,
        )
        return live or await seed.create_session(conn, user_id)
    finally:
        await conn.close()


def run_demo(host: str | None, port: int | None, workers: int | None) -> int:
    """Start (or reuse) Postgres, seed it, print a curl command, serve until Ctrl-C."""
    folder = data_dir()
    os.environ.setdefault("BETTER_AUTH_SECRET", _demo_secret(folder))
    with contextlib.ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            # pgserver asks for a runtime folder, which containers lack; its fallback is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pgserver import get_server  # type: ignore[attr-defined]  # noqa: PLC0415  (only the demo needs the embedded server)

            server = get_server(folder / "pgdata", cleanup_mode="stop")
            stack.callback(server.cleanup)
            os.environ["DATABASE_URL"] = server.get_uri()
            print(f"embedded PostgreSQL: data in {folder / 'pgdata'}", file=sys.stderr)  # noqa: T201
        overrides = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
        settings = settings_or_none(overrides)
        if settings is None:
            return 2
        token = asyncio.run(_seed(os.environ["DATABASE_URL"]))
        cookie = f"{settings.cookie_names[0]}={quote(sign(token, settings.secret.reveal()), safe='')}"
        url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"  # noqa: S104
        print(f"demo user {DEMO_EMAIL}; validate its session with:", file=sys.stderr)  # noqa: T201
        print(f"curl -i -H 'Cookie: {cookie}' {url}/validate", flush=True)  # noqa: T201
        return serve(settings)
