"""FastAPI dependencies: ``require_session`` (401 without a session, 503 when the gateway cannot say).

::

    from better_auth_gateway_client import GatewayClient, Identity
    from better_auth_gateway_client.fastapi import CurrentIdentity, require_role

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with GatewayClient("http://gateway:8080") as app.state.gateway:  # one pool for the service
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/me")
    async def me(identity: CurrentIdentity): ...             # Depends(require_session)

    @app.get("/admin", dependencies=[Depends(require_role("admin"))])
    async def admin(): ...

The identity comes from ``GatewayMiddleware`` when the app has it (asked once per request),
else from the ``GatewayClient`` at ``app.state.gateway``. Needs ``pip install
'better-auth-gateway-client[fastapi]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection  # noqa: TC002  (FastAPI reads the annotation at run time)

from better_auth_gateway_client.asgi import SCOPE_KEY
from better_auth_gateway_client.client import GatewayClient
from better_auth_gateway_client.errors import GatewayUnavailable
from better_auth_gateway_client.identity import Identity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

STATE_ATTRIBUTE = "gateway"
"""The ``app.state`` attribute holding the app's ``GatewayClient`` (without the middleware)."""

_NOT_SIGNED_IN = {"www-authenticate": "Bearer"}


async def optional_session(connection: HTTPConnection) -> Identity | None:
    """The caller's identity, ``None`` without a valid session; 503 when the gateway cannot say."""
    if SCOPE_KEY in connection.scope:
        identity: Identity | None = connection.scope[SCOPE_KEY]
        return identity
    gateway = getattr(connection.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(gateway, GatewayClient):
        raise RuntimeError(  # noqa: TRY004  (a missing setup, not a wrong argument)
            f"no GatewayClient at app.state.{STATE_ATTRIBUTE} and no GatewayMiddleware: set one in the app's lifespan"
        )
    try:
        return await gateway.validate_request(connection.scope["headers"])
    except GatewayUnavailable as exc:
        retry = {"retry-after": str(round(exc.retry_after))} if exc.retry_after is not None else None
        raise HTTPException(503, "session check unavailable", headers=retry) from exc


OptionalIdentity = Annotated[Identity | None, Depends(optional_session)]


async def require_session(identity: OptionalIdentity) -> Identity:
    """The caller's identity; 401 (``WWW-Authenticate: Bearer``) without a valid session, 503 as above."""
    if identity is None:
        raise HTTPException(401, "not signed in", headers=_NOT_SIGNED_IN)
    return identity


CurrentIdentity = Annotated[Identity, Depends(require_session)]


def require_role(*roles: str) -> Callable[[Identity], Awaitable[Identity]]:
    """A dependency wanting one of ``roles`` (the admin plugin's ``role``); 403 without, 401 and 503 as above.

    The gateway answers ``role`` with ``GATEWAY_PLUGINS=admin``, as Better Auth does with ``admin()``.
    """
    wanted = frozenset(roles)

    async def check_role(identity: CurrentIdentity) -> Identity:
        if wanted.isdisjoint(identity.user.roles):
            raise HTTPException(403, "needs the role " + " or ".join(sorted(wanted)))
        return identity

    return check_role
