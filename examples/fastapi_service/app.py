"""A FastAPI service that lets the gateway answer "whose session is this?" (better-auth-gateway-client).

    pip install './clients/python[fastapi]' uvicorn      # httpx and FastAPI: not the gateway's server
    GATEWAY_URL=http://127.0.0.1:8080 uvicorn examples.fastapi_service.app:app

``CurrentIdentity`` (``Depends(require_session)``) forwards the request's own credential (its
Cookie, ``Authorization: Bearer`` or ``X-Session-Token``, nothing else) to the gateway, and answers
401 when there is no valid session and 503 when the gateway cannot tell (never 401 then: that
would sign the user out). ``require_role`` also wants the admin plugin's role (403 without).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from better_auth_gateway_client import GatewayClient
from better_auth_gateway_client.fastapi import CurrentIdentity, OptionalIdentity, require_role
from fastapi import Depends, FastAPI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client (one connection pool) for the whole service, where the dependencies look for it."""
    async with GatewayClient(os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080")) as app.state.gateway:
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/me")
async def me(identity: CurrentIdentity) -> dict[str, object]:
    """Who is calling."""
    session = identity.session
    return {"id": identity.user.id, "email": identity.user.email, "session": session.id if session else None}


@app.get("/hello")
async def hello(identity: OptionalIdentity) -> dict[str, str]:
    """For everyone: a greeting by name for a signed-in caller."""
    return {"hello": (identity.user.name or identity.user.id) if identity else "stranger"}


@app.get("/admin/ping", dependencies=[Depends(require_role("admin"))])
async def admin_ping() -> dict[str, str]:
    """Only for admins."""
    return {"pong": "admin"}
