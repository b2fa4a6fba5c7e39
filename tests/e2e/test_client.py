"""``gateway.client`` (async and sync) and the FastAPI example, against a real gateway."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.client import GatewayClient, GatewayUnavailable, Identity, SyncGatewayClient
from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support import ROOT
from tests.support.credentials import SECRET, cookie
from tests.support.ports import free_port

if TYPE_CHECKING:
    import asyncpg

    from tests.support.server import Server


@pytest.fixture
async def admin(db: asyncpg.Connection) -> tuple[str, str]:
    uid = await seed.create_user(db, email="ada@example.com", name="Ada", role="admin,user")
    return uid, await seed.create_session(db, uid)


@pytest.fixture
def gateway(database: str, start_gateway: Any) -> Server:
    server: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_PLUGINS": "admin"})  # role is returned
    return server


async def test_async_client(gateway: Server, admin: tuple[str, str]) -> None:
    uid, token = admin
    async with GatewayClient(gateway.url) as client:
        for credential in (token, sign(token, SECRET)):
            identity = await client.validate(credential)
            assert isinstance(identity, Identity)
            assert identity.user.id == uid
            assert identity.user.email == "ada@example.com"
            assert identity.user.roles == ("admin", "user")
            assert identity.session is not None
            assert identity.session.user_id == uid
            assert identity.session.expires_at.tzinfo is not None
        assert await client.validate(seed.generate_id()) is None
        assert await client.validate(sign(token, "another-secret-entirely-0123456789")) is None
        assert await client.validate("x" * 20_000) is None  # over the body limit: no session either
        identity = await client.validate_request(cookie(token) | {"x-unrelated": "1"})
        assert identity is not None
        assert identity.user.id == uid
        assert await client.validate_request({"accept": "text/html"}) is None


def test_sync_client(gateway: Server, admin: tuple[str, str]) -> None:
    uid, token = admin
    with SyncGatewayClient(gateway.url) as client:
        identity = client.validate(token)
        assert identity is not None
        assert identity.user.id == uid
        assert client.validate_request({"authorization": f"Bearer {sign(token, SECRET)}"}) == identity
        assert client.validate(seed.generate_id()) is None


async def test_unreachable_gateway_is_unavailable_not_invalid() -> None:
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as client:
        with pytest.raises(GatewayUnavailable):
            await client.validate(seed.generate_id())
    with SyncGatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as sync, pytest.raises(GatewayUnavailable):
        sync.validate(seed.generate_id())


async def test_fastapi_example(gateway: Server, admin: tuple[str, str], db: asyncpg.Connection) -> None:
    """The example service: 200 for a session, 401 without, 403 without the role, 503 with no gateway."""
    path = ROOT / "examples" / "fastapi_service" / "app.py"
    spec = importlib.util.spec_from_file_location("fastapi_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    uid, token = admin
    plain = await seed.create_user(db, email="bob@example.com")
    bob = await seed.create_session(db, plain)

    async def call(url: str, path: str, headers: dict[str, str]) -> httpx.Response:
        async with GatewayClient(url) as client:
            example.app.state.gateway = client
            transport = httpx.ASGITransport(app=example.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
                return await http.get(path, headers=headers)

    r = await call(gateway.url, "/me", cookie(token))
    assert r.status_code == 200
    assert r.json()["id"] == uid
    assert (await call(gateway.url, "/me", {"authorization": f"Bearer {sign(token, SECRET)}"})).status_code == 200
    assert (await call(gateway.url, "/me", {})).status_code == 401
    assert (await call(gateway.url, "/admin/ping", cookie(token))).status_code == 200
    assert (await call(gateway.url, "/admin/ping", cookie(bob))).status_code == 403
    down = await call(f"http://127.0.0.1:{free_port()}", "/me", cookie(token))
    assert down.status_code == 503


async def test_columns_better_auth_does_not_return_are_never_sent(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """A column another app added to the user and to the session table, and a plugin's column left
    without its plugin, reach no answer: not get-session, not /v1/validate, not gateway.client."""
    await db.execute("""alter table "user" add column "ssn" text default 'secret-user-value'""")
    await db.execute("""alter table "session" add column "deviceSecret" text default 'secret-session-value'""")
    uid = await seed.create_user(db, email="ada@example.com", role="admin")
    token = await seed.create_session(db, uid)
    await db.execute('update "session" set "activeOrganizationId" = $1', "secret-org-value")
    gw: Server = start_gateway({"DATABASE_URL": database})  # Better Auth's defaults: no plugins
    secrets = (b"secret-user-value", b"secret-session-value", b"secret-org-value", b"ssn", b"deviceSecret", b"role")
    received: list[bytes] = []

    async def keep(response: httpx.Response) -> None:
        received.append(await response.aread())

    async with httpx.AsyncClient(timeout=5, event_hooks={"response": [keep]}) as http:
        await http.get(gw.url + "/api/auth/get-session", headers=cookie(token))
        await http.post(gw.url + "/v1/validate", json={"token": token})
        async with GatewayClient(gw.url, client=http) as client:
            identity = await client.validate(token)
        r = await http.get(gw.url + "/validate", headers=cookie(token))
    assert identity is not None
    assert identity.user.id == uid
    assert len(received) == 4
    assert all(b'"userId"' in body for body in received[:3])  # each JSON answer is a session
    assert not [s for s in secrets for body in received if s in body]
    assert r.headers["x-auth-request-role"] == "admin"  # still read to decide, never returned
