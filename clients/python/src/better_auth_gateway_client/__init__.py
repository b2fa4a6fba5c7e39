"""Ask a better-auth-gateway whose session a request carries.

::

    from better_auth_gateway_client import GatewayClient, GatewayUnavailable

    async with GatewayClient("http://gateway:8080") as gateway:
        identity = await gateway.validate(token)                   # raw, signed, or a JWT
        identity = await gateway.validate_request(request.headers)  # the request's own credential
        if identity is None: ...                                    # no valid session: answer 401
        identity.user.id, identity.user.email, identity.user.roles, identity.session.expires_at

``SyncGatewayClient`` is the same for synchronous code. ``GatewayUnavailable`` (and its
``RateLimited``) means the gateway could not say: answer 503, never 401 (a 401 signs front ends
out). ``better_auth_gateway_client.fastapi`` has FastAPI dependencies, ``.asgi`` a middleware
for any ASGI app (Starlette, FastAPI). Needs httpx only.
"""

from better_auth_gateway_client.client import GatewayClient, SyncGatewayClient
from better_auth_gateway_client.errors import GatewayUnavailable, RateLimited
from better_auth_gateway_client.identity import Identity, Session, User
from better_auth_gateway_client.protocol import CREDENTIAL_HEADERS

__version__ = "0.1.0"

__all__ = [
    "CREDENTIAL_HEADERS",
    "GatewayClient",
    "GatewayUnavailable",
    "Identity",
    "RateLimited",
    "Session",
    "SyncGatewayClient",
    "User",
]
