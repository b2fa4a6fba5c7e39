"""``GatewayMiddleware``: every request's identity, asked of the gateway once, for any ASGI app.

::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from better_auth_gateway_client.asgi import GatewayMiddleware

    app = Starlette(routes=..., middleware=[Middleware(GatewayMiddleware, gateway="http://gateway:8080")])
    # in an endpoint: request.state.identity is an Identity, or None (no valid session)

For each HTTP and WebSocket request the middleware sends the request's credential fields
(Cookie, Authorization, X-Session-Token: nothing else) to the gateway and puts the answer in the
scope: ``scope["state"]["identity"]`` (Starlette's ``request.state.identity``) and
``scope[SCOPE_KEY]``. A request without a credential is ``None`` at once. It refuses nothing
itself: an endpoint answers 401 for ``None`` where it needs a session (FastAPI's
``require_session`` reads the middleware's answer).

When a request carries a credential and the gateway cannot judge it, the middleware answers
**503** (with the gateway's ``Retry-After``; a WebSocket is closed with 1013, "try again later")
and the app is not called: the request is neither signed in nor signed out, and no code of the
app can take it for either.

``gateway``: a ``GatewayClient`` the app owns, or a base URL (the middleware then owns a client
and closes it at the end of the lifespan).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from better_auth_gateway_client.client import GatewayClient
from better_auth_gateway_client.errors import GatewayUnavailable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "better_auth_gateway.identity"
"""Where the identity is in the scope (also at ``scope["state"]["identity"]``)."""

_UNAVAILABLE = json.dumps({"detail": "session check unavailable"}).encode()
_TRY_AGAIN_LATER = 1013  # WebSocket close code (RFC 6455 registry): the server cannot answer now


class GatewayMiddleware:
    """Put the gateway's answer about each request's credential in its scope; 503 when there is none."""

    def __init__(self, app: ASGIApp, *, gateway: GatewayClient | str) -> None:
        self.app = app
        self._owned = isinstance(gateway, str)
        self.gateway = GatewayClient(gateway) if isinstance(gateway, str) else gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Identify an HTTP or WebSocket request, then call the app; pass the rest through."""
        kind = scope["type"]
        if kind == "lifespan" and self._owned:
            return await self.app(scope, receive, self._closing(send))
        if kind not in {"http", "websocket"}:
            return await self.app(scope, receive, send)
        try:
            identity = await self.gateway.validate_request(scope["headers"])
        except GatewayUnavailable as exc:
            return await _unavailable(kind, send, exc.retry_after)
        scope.setdefault("state", {})["identity"] = identity
        scope[SCOPE_KEY] = identity
        return await self.app(scope, receive, send)

    def _closing(self, send: Send) -> Send:
        """``send`` that closes the owned client once the app has shut down."""

        async def closing_send(message: Message) -> None:
            if message["type"] in {"lifespan.shutdown.complete", "lifespan.shutdown.failed"}:
                await self.gateway.aclose()
            await send(message)

        return closing_send


async def _unavailable(kind: str, send: Send, retry_after: float | None) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": _TRY_AGAIN_LATER, "reason": "session check unavailable"})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_UNAVAILABLE)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(round(retry_after)).encode()))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _UNAVAILABLE})
