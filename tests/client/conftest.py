"""Fixtures of the client's tests (clients/python): a real gateway and a real session to ask it about."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from gateway.postgres import seed

if TYPE_CHECKING:
    import asyncpg

    from tests.support.server import Server


@pytest.fixture
async def admin(db: asyncpg.Connection) -> tuple[str, str]:
    """``(user id, session token)`` of a user with the admin plugin's roles ``admin,user``."""
    uid = await seed.create_user(db, email="ada@example.com", name="Ada", role="admin,user")
    return uid, await seed.create_session(db, uid)


@pytest.fixture
def gateway(database: str, db: asyncpg.Connection, start_gateway: Any) -> Server:
    """A real ``gateway serve`` on the test's database (its tables made first: it installs its triggers)."""
    server: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_PLUGINS": "admin"})
    return server
