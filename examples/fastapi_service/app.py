"""A FastAPI service that lets the gateway answer "whose session is this?" (``gateway.client``).

    pip install 'better-auth-gateway[client]' fastapi uvicorn
    GATEWAY_URL=http://127.0.0.1:8080 uvicorn examples.fastapi_service.app:app

``current_user`` is a dependency: it forwards the request's own credential (its Cookie or
``Authorization: Bearer``) to the gateway, and answers 401 when there is no valid session and
503 when the gateway cannot tell (never 401 then: that would sign the user out). Starlette apps
can call ``identify`` the same way from a middleware or an endpoint.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

from gateway.client import GatewayClient, GatewayUnavailable, Identity

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client (one connection pool) for the whole service."""
    async with GatewayClient(os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080")) as client:
        app.state.gateway = client
        yield


app = FastAPI(lifespan=lifespan)


async def identify(request: Request) -> Identity:
    """The caller's identity, or the HTTP error the service must answer."""
    try:
        identity = await request.app.state.gateway.validate_request(request.headers)
    except GatewayUnavailable as exc:
        retry = {"retry-after": str(round(exc.retry_after))} if exc.retry_after else None
        raise HTTPException(503, "session check unavailable", headers=retry) from exc
    if identity is None:
        raise HTTPException(401, "not signed in", headers={"www-authenticate": "Bearer"})
    return identity


CurrentUser = Annotated[Identity, Depends(identify)]


def require_role(role: str) -> Any:
    """A dependency that also wants the admin plugin's ``role``.

    The gateway answers ``role`` with ``GATEWAY_PLUGINS=admin``, as Better Auth does with ``admin()``.
    """

    async def check(identity: CurrentUser) -> Identity:
        if role not in identity.user.roles:
            raise HTTPException(403, f"needs the {role} role")
        return identity

    return Depends(check)


@app.get("/me")
async def me(identity: CurrentUser) -> dict[str, object]:
    """Who is calling."""
    return {"id": identity.user.id, "email": identity.user.email, "session": identity.session.id}


@app.get("/admin/ping", dependencies=[require_role("admin")])
async def admin_ping() -> dict[str, str]:
    """Only for admins."""
    return {"pong": "admin"}
