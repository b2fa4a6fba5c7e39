"""GatewayMiddleware in a Starlette app, against a real gateway: the identity on request.state, or 503."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
from better_auth_gateway_client import GatewayClient, Identity
from better_auth_gateway_client.asgi import SCOPE_KEY, GatewayMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support.credentials import SECRET, cookie, cookie_pair
from tests.support.ports import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from tests.support.server import Server


class App:
    """A Starlette app behind the middleware, remembering what its endpoints saw."""

    def __init__(self, gateway: GatewayClient | str) -> None:
        self.seen: list[Identity | None] = []
        self.app = Starlette(
            routes=[Route("/", self.home), WebSocketRoute("/ws", self.socket)],
            middleware=[Middleware(GatewayMiddleware, gateway=gateway)],
        )

    async def home(self, request: Request) -> JSONResponse:
        identity: Identity | None = request.state.identity
        assert request.scope[SCOPE_KEY] is identity
        self.seen.append(identity)
        return JSONResponse({"id": identity.user.id if identity else None})

    async def socket(self, websocket: WebSocket) -> None:
        identity: Identity | None = websocket.state.identity
        await websocket.accept()
        await websocket.send_json({"id": identity.user.id if identity else None})
        await websocket.close()

    async def get(self, headers: list[tuple[str, str]] | dict[str, str] | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            return await http.get("/", headers=headers)


async def test_identity_on_request_state(gateway: Server, admin: tuple[str, str]) -> None:
    """A session's identity (cookie, bearer, X-Session-Token), None without one or for a forgery."""
    uid, token = admin
    async with GatewayClient(gateway.url) as client:
        app = App(client)
        for headers in (cookie(token), {"authorization": f"Bearer {sign(token, SECRET)}"}, {"x-session-token": token}):
            assert (await app.get(headers)).json() == {"id": uid}
        assert (await app.get()).json() == {"id": None}
        assert (await app.get({"authorization": f"Bearer {seed.generate_id()}"})).json() == {"id": None}
    assert len(app.seen) == 5


async def test_only_the_credential_fields_reach_the_gateway(gateway: Server, admin: tuple[str, str]) -> None:
    """The gateway gets a request's Cookie fields (all, HTTP/2-split too), Authorization, X-Session-Token: no more."""
    uid, token = admin
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    headers = [
        ("cookie", "theme=dark"),
        ("x-forwarded-for", "203.0.113.9"),
        ("cookie", cookie_pair(token)),
        ("x-csrf-token", "service-secret"),
        ("x-session-token", "not-a-session"),  # Better Auth's order: X-Session-Token before the cookie
    ]
    async with httpx.AsyncClient(event_hooks={"request": [keep]}) as http, GatewayClient(gateway.url, client=http) as c:
        app = App(c)
        assert (await app.get(headers)).json() == {"id": None}
        assert (await app.get(headers[:4])).json() == {"id": uid}
    forwarded = [(k, v) for k, v in sent[0].headers.multi_items() if k in {"cookie", "x-session-token"}]
    assert forwarded == [("cookie", "theme=dark"), ("cookie", cookie_pair(token)), ("x-session-token", "not-a-session")]
    for request in sent:
        assert {"x-forwarded-for", "x-csrf-token"}.isdisjoint(request.headers.keys())


async def test_gateway_unreachable_is_503_and_the_app_is_not_called(admin: tuple[str, str]) -> None:
    """Nothing at the gateway's address: 503 (no-store) for a request with a credential; without one, the app runs."""
    _, token = admin
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout=0.5) as client:
        app = App(client)
        r = await app.get(cookie(token))
        assert r.status_code == 503
        assert r.json() == {"detail": "session check unavailable"}
        assert r.headers["cache-control"] == "no-store"
        assert app.seen == []
        assert (await app.get()).json() == {"id": None}
    assert app.seen == [None]


async def test_store_down_is_503_with_retry_after(start_gateway: Any) -> None:
    """The gateway's own 503 (its Postgres down) reaches the caller with its Retry-After."""
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    gw: Server = start_gateway({"DATABASE_URL": dead_db, "GATEWAY_STARTUP_WAIT_S": "0", "GATEWAY_DB_TIMEOUT_S": "0.5"})
    async with GatewayClient(gw.url) as client:
        r = await App(client).get(cookie(seed.generate_id()))
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1


async def asgi(app: Any, scope: dict[str, Any], *incoming: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``app`` on one ASGI ``scope`` as a server would, with the ``incoming`` messages; what it sent."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in incoming:
        queue.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope | {"asgi": {"version": "3.0"}}, queue.get, send), 10)
    return sent


def websocket(headers: dict[str, str]) -> dict[str, Any]:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "path": "/ws", "headers": raw, "scheme": "ws", "query_string": b"", "state": {}}


CONNECT, DISCONNECT = {"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}


async def test_websocket_and_lifespan_with_a_url(gateway: Server, admin: tuple[str, str]) -> None:
    """Given a URL, the middleware owns its client (closed at shutdown); a WebSocket gets the identity, or 1013."""
    uid, token = admin
    app = App(gateway.url).app
    life: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    said: list[MutableMapping[str, Any]] = []

    async def tell(message: MutableMapping[str, Any]) -> None:
        said.append(message)

    life.put_nowait({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, life.get, tell))
    await eventually(lambda: said)
    assert said == [{"type": "lifespan.startup.complete"}]
    sent = await asgi(app, websocket(cookie(token)), CONNECT, DISCONNECT)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"id": uid}
    sent = await asgi(app, websocket({}), CONNECT, DISCONNECT)
    assert json.loads(sent[1]["text"]) == {"id": None}
    owned: Any = app.middleware_stack
    while not isinstance(owned, GatewayMiddleware):
        owned = owned.app
    gateway.stop()
    sent = await asgi(app, websocket(cookie(token)), CONNECT, DISCONNECT)
    assert sent == [{"type": "websocket.close", "code": 1013, "reason": "session check unavailable"}]
    assert not owned.gateway._client.is_closed
    life.put_nowait({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 10)
    assert said[-1] == {"type": "lifespan.shutdown.complete"}
    assert owned.gateway._client.is_closed
