"""The client for Python services (clients/python), async and sync, and the FastAPI example, against a real gateway."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from better_auth_gateway_client import GatewayClient, GatewayUnavailable, Identity, RateLimited, SyncGatewayClient

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support import ROOT
from tests.support.credentials import SECRET, cookie
from tests.support.ports import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import asyncpg

    from tests.support.server import Server


@pytest.fixture
async def admin(db: asyncpg.Connection) -> tuple[str, str]:
    uid = await seed.create_user(db, email="ada@example.com", name="Ada", role="admin,user")
    return uid, await seed.create_session(db, uid)


@pytest.fixture
def gateway(database: str, db: asyncpg.Connection, start_gateway: Any) -> Server:
    # After db: Better Auth's tables exist when it starts, so it installs its triggers on them.
    server: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_PLUGINS": "admin"})  # role is returned
    return server


async def test_async_client(gateway: Server, admin: tuple[str, str]) -> None:
    """Raw and signed tokens and a request's Cookie give the identity; unknown, forged and oversized give None."""
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
        assert await client.validate_request({"X-Session-Token": sign(token, SECRET)}) == identity
        assert await client.validate_request(httpx.Headers({"Cookie": cookie(token)["cookie"]})) == identity
        assert await client.validate_request({"accept": "text/html"}) is None


def test_sync_client(gateway: Server, admin: tuple[str, str]) -> None:
    """The synchronous client gives the same answers."""
    uid, token = admin
    with SyncGatewayClient(gateway.url) as client:
        identity = client.validate(token)
        assert identity is not None
        assert identity.user.id == uid
        assert client.validate_request({"authorization": f"Bearer {sign(token, SECRET)}"}) == identity
        assert client.validate(seed.generate_id()) is None


async def test_only_the_credential_fields_are_sent(gateway: Server, admin: tuple[str, str]) -> None:
    """validate_request sends Cookie, Authorization and X-Session-Token (every field, in order), nothing else."""
    _, token = admin
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    headers = [
        (b"host", b"service.internal"),
        (b"cookie", b"theme=dark"),  # an HTTP/2 client splits its Cookie into several fields
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"cookie", cookie(token)["cookie"].encode()),
        (b"x-api-secret", b"do-not-forward"),
        (b"authorization", b"Basic dXNlcjpwYXNz"),
    ]
    async with (
        httpx.AsyncClient(event_hooks={"request": [keep]}) as http,
        GatewayClient(gateway.url, client=http) as client,
    ):
        assert await client.validate_request(headers) is not None
    (request,) = sent
    assert request.headers.get_list("cookie") == ["theme=dark", cookie(token)["cookie"]]
    assert request.headers["authorization"] == "Basic dXNlcjpwYXNz"
    assert request.content == b""
    httpx_own = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length"}
    assert set(request.headers.keys()) - httpx_own == {"cookie", "authorization"}
    assert request.headers["host"] == f"127.0.0.1:{gateway.port}"


async def test_unreachable_gateway_is_unavailable_not_invalid() -> None:
    """Nothing listening: GatewayUnavailable from both clients, never None."""
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as client:
        with pytest.raises(GatewayUnavailable):
            await client.validate(seed.generate_id())
    with SyncGatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as sync, pytest.raises(GatewayUnavailable):
        sync.validate(seed.generate_id())


async def test_wrong_url_is_unavailable_not_invalid(gateway: Server, admin: tuple[str, str]) -> None:
    """A base URL that is not the gateway's root (its 404) is no verdict: GatewayUnavailable."""
    _, token = admin
    async with GatewayClient(gateway.url + "/some/prefix") as client:
        with pytest.raises(GatewayUnavailable, match="HTTP 404"):
            await client.validate(token)


async def test_store_down_is_unavailable_with_retry_after(start_gateway: Any) -> None:
    """A gateway whose Postgres is down answers 503: GatewayUnavailable with its Retry-After (a signed cookie)."""
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    gw: Server = start_gateway({"DATABASE_URL": dead_db, "GATEWAY_STARTUP_WAIT_S": "0", "GATEWAY_DB_TIMEOUT_S": "0.5"})
    async with GatewayClient(gw.url) as client:
        with pytest.raises(GatewayUnavailable) as caught:
            await client.validate_request(cookie(seed.generate_id()))
    assert type(caught.value) is GatewayUnavailable
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_rate_limited_is_unavailable_not_invalid(
    database: str, db: asyncpg.Connection, start_gateway: Any
) -> None:
    """Past the gateway's failure budget, lookups that get no turn raise RateLimited (with Retry-After), never None."""
    env = {"DATABASE_URL": database, "GATEWAY_RATE_LIMIT_PER_MINUTE": "60", "GATEWAY_RATE_LIMIT_BURST": "1"}
    gw: Server = start_gateway(env | {"GATEWAY_RATE_LIMIT_MAX_WAIT_S": "1"})
    async with GatewayClient(gw.url, timeout=10) as client:
        answers = await asyncio.gather(*(client.validate(seed.generate_id()) for _ in range(8)), return_exceptions=True)
    limited = [a for a in answers if isinstance(a, RateLimited)]
    assert limited
    assert all(a.retry_after for a in limited)
    assert {type(a) for a in answers} <= {type(None), RateLimited}


async def test_cache_keeps_a_session_for_its_ttl_only(
    gateway: Server, admin: tuple[str, str], db: asyncpg.Connection
) -> None:
    """With cache_ttl_s, a session revoked at the gateway stays valid here until the TTL (injected clock) has passed."""
    uid, token = admin
    now = [0.0]
    asked: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        asked.append(request)

    async with (
        httpx.AsyncClient(event_hooks={"request": [keep]}) as http,
        GatewayClient(gateway.url, client=http, cache_ttl_s=5, clock=lambda: now[0]) as client,
    ):
        identity = await client.validate_request(cookie(token))
        assert identity is not None
        assert await client.validate_request(cookie(token)) == identity
        assert len(asked) == 1  # the second answer came from the cache
        assert token not in repr(client._cache._entries)  # keys are digests, never the credential
        await db.execute('delete from "session" where token = $1', token)  # the gateway hears it (triggers)
        now[0] = 4.9
        assert await client.validate_request(cookie(token)) == identity
        assert len(asked) == 1
        now[0] = 5.0
        await eventually(lambda: _is_none(client.validate_request(cookie(token))))  # the gateway evicts at once
        before = len(asked)
        assert await client.validate_request(cookie(token)) is None
        assert len(asked) == before + 1  # no session is never kept
    assert uid == identity.user.id


async def _is_none(answer: Awaitable[Identity | None]) -> bool:
    return await answer is None


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
    unauthenticated = await call(gateway.url, "/me", {})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"] == "Bearer"
    assert (await call(gateway.url, "/hello", {})).json() == {"hello": "stranger"}
    assert (await call(gateway.url, "/hello", cookie(token))).json() == {"hello": "Ada"}
    assert (await call(gateway.url, "/admin/ping", cookie(token))).status_code == 200
    assert (await call(gateway.url, "/admin/ping", cookie(bob))).status_code == 403
    down = await call(f"http://127.0.0.1:{free_port()}", "/me", cookie(token))
    assert down.status_code == 503


async def test_columns_better_auth_does_not_return_are_never_sent(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """A column another app added to the user and to the session table, and a plugin's column left
    without its plugin, reach no answer: not get-session, not /v1/validate, not the client."""
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
    assert identity.user.role is None
    assert identity.user.extra == {}
    assert identity.session is not None
    assert identity.session.extra == {}
    assert identity.session.active_organization_id is None
    assert len(received) == 4
    assert all(b'"userId"' in body for body in received[:3])  # each JSON answer is a session
    assert not [s for s in secrets for body in received if s in body]
    assert r.headers["x-auth-request-role"] == "admin"  # still read to decide, never returned
