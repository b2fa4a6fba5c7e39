"""The client's FastAPI dependencies, against a real gateway: 200 with the identity, 401 without, or 503."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from better_auth_gateway_client import GatewayClient
from better_auth_gateway_client.asgi import GatewayMiddleware
from better_auth_gateway_client.fastapi import CurrentIdentity, OptionalIdentity, require_role
from fastapi import Depends, FastAPI

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support.credentials import SECRET, cookie
from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from tests.support.server import Server


def service(gateway: GatewayClient | None, *, middleware: bool = False) -> FastAPI:
    """A FastAPI service using the dependencies; its client at ``app.state.gateway`` (or in the middleware)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(lifespan=lifespan)
    if gateway is not None and not middleware:
        app.state.gateway = gateway
    if gateway is not None and middleware:
        app.add_middleware(GatewayMiddleware, gateway=gateway)

    @app.get("/me")
    async def me(identity: CurrentIdentity) -> dict[str, object]:
        return {"id": identity.user.id, "email": identity.user.email, "roles": list(identity.user.roles)}

    @app.get("/maybe")
    async def maybe(identity: OptionalIdentity) -> dict[str, object]:
        return {"id": identity.user.id if identity else None}

    @app.get("/admin", dependencies=[Depends(require_role("admin", "owner"))])
    async def admin() -> dict[str, bool]:
        return {"admin": True}

    @app.get("/admin/me", dependencies=[Depends(require_role("admin"))])
    async def admin_me(identity: CurrentIdentity) -> dict[str, str]:
        return {"id": identity.user.id}

    return app


async def get(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        return await http.get(path, headers=headers)


class Counted:
    """An httpx client for a GatewayClient that counts the calls it makes to the gateway."""

    def __init__(self) -> None:
        self.calls = 0
        self.http = httpx.AsyncClient(event_hooks={"request": [self._count]})

    async def _count(self, _: httpx.Request) -> None:
        self.calls += 1


@pytest.fixture
async def counted() -> AsyncIterator[Counted]:
    c = Counted()
    async with c.http:
        yield c


async def test_require_session_gives_the_identity(gateway: Server, admin: tuple[str, str]) -> None:
    """Cookie, bearer and X-Session-Token: 200 with the identity from the real gateway."""
    uid, token = admin
    async with GatewayClient(gateway.url) as client:
        app = service(client)
        for headers in (
            cookie(token),
            {"authorization": f"Bearer {sign(token, SECRET)}"},
            {"x-session-token": token},
        ):
            r = await get(app, "/me", headers)
            assert r.status_code == 200, headers
            assert r.json() == {"id": uid, "email": "ada@example.com", "roles": ["admin", "user"]}


async def test_no_valid_session_is_401(gateway: Server, admin: tuple[str, str]) -> None:
    """No credential, an unknown token, a forged signature: 401 with WWW-Authenticate; optional_session gives None."""
    _, token = admin
    async with GatewayClient(gateway.url) as client:
        app = service(client)
        for headers in (
            {},
            {"authorization": f"Bearer {seed.generate_id()}"},
            cookie(token, secret="another-secret-entirely-0123456789"),
        ):
            r = await get(app, "/me", headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert (await get(app, "/maybe", headers)).json() == {"id": None}
        assert (await get(app, "/maybe", cookie(token))).json() == {"id": admin[0]}


async def test_require_role(gateway: Server, admin: tuple[str, str], db: asyncpg.Connection) -> None:
    """One of the roles: 200; a session without: 403; no session: 401."""
    _, token = admin
    bob = await seed.create_session(db, await seed.create_user(db, email="bob@example.com", role="user"))
    async with GatewayClient(gateway.url) as client:
        app = service(client)
        assert (await get(app, "/admin", cookie(token))).status_code == 200
        assert (await get(app, "/admin", cookie(bob))).status_code == 403
        assert (await get(app, "/admin")).status_code == 401


async def test_gateway_down_is_503_never_401(admin: tuple[str, str]) -> None:
    """Nothing listening at the gateway's address: 503 for a credential (on both dependencies), 401 without one."""
    _, token = admin
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as client:
        app = service(client)
        assert (await get(app, "/me", cookie(token))).status_code == 503
        assert (await get(app, "/maybe", cookie(token))).status_code == 503
        assert (await get(app, "/me")).status_code == 401  # no credential: no session, whatever the gateway


async def test_gateway_stopped_is_503(gateway: Server, admin: tuple[str, str]) -> None:
    """The same client before and after its gateway stops: 200, then 503 (pooled connections gone with it)."""
    _, token = admin
    async with GatewayClient(gateway.url, timeout=0.5) as client:
        app = service(client)
        assert (await get(app, "/me", cookie(token))).status_code == 200
        gateway.stop()
        assert (await get(app, "/me", cookie(token))).status_code == 503


async def test_store_down_is_503_with_retry_after(start_gateway: Any) -> None:
    """The gateway up, its Postgres down: the gateway's 503 becomes the service's, Retry-After kept."""
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    gw: Server = start_gateway({"DATABASE_URL": dead_db, "GATEWAY_STARTUP_WAIT_S": "0", "GATEWAY_DB_TIMEOUT_S": "0.5"})
    async with GatewayClient(gw.url) as client:
        r = await get(service(client), "/me", cookie(seed.generate_id()))
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1


async def test_the_middlewares_answer_is_used(gateway: Server, admin: tuple[str, str], counted: Counted) -> None:
    """With GatewayMiddleware the dependency asks nothing more: one call to the gateway per request."""
    uid, token = admin
    async with GatewayClient(gateway.url, client=counted.http) as client:
        app = service(client, middleware=True)
        r = await get(app, "/admin", cookie(token))
        assert r.status_code == 200
        assert counted.calls == 1
        assert (await get(app, "/me", cookie(token))).json()["id"] == uid
        assert counted.calls == 2
        assert (await get(app, "/me")).status_code == 401
        assert counted.calls == 2  # no credential: nothing asked


async def test_one_call_per_request_without_the_middleware(
    gateway: Server, admin: tuple[str, str], counted: Counted
) -> None:
    """require_role and CurrentIdentity on one route share one answer (FastAPI caches it per request)."""
    uid, token = admin
    async with GatewayClient(gateway.url, client=counted.http) as client:
        assert (await get(service(client), "/admin/me", cookie(token))).json() == {"id": uid}
    assert counted.calls == 1


async def test_no_client_is_a_setup_error() -> None:
    """Without app.state.gateway and without the middleware, the dependency says what is missing."""
    with pytest.raises(RuntimeError, match=r"app\.state\.gateway"):
        await get(service(None), "/me", {"cookie": "x=1"})
