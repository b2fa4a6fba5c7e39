"""A small client for Python services that ask a gateway about their callers' sessions.

    from gateway.client import GatewayClient

    gateway = GatewayClient("http://gateway:8080")
    identity = await gateway.validate(token)           # a raw or signed token, e.g. a bearer value
    identity = await gateway.validate_request(headers) # a request's own Cookie / Authorization
    if identity is None: ...                           # not a valid session: answer 401
    identity.user.id, identity.user.email, identity.session.expires_at

``SyncGatewayClient`` is the same for synchronous code. Both call ``POST /v1/validate`` and
return typed values with Better Auth's fields (plugin fields such as ``role`` or
``activeOrganizationId`` are ``None`` where the plugin is not installed).

A gateway that cannot answer raises ``GatewayUnavailable``: a caller must answer 503 then,
never 401 (a 401 makes front ends sign their users out). Needs ``httpx``
(``pip install 'better-auth-gateway[client]'``).
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003  (msgspec resolves the annotations at run time)
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType
    from typing import Self

# The request headers that carry a Better Auth credential; the rest of a request is not sent on.
CREDENTIAL_HEADERS = ("authorization", "cookie", "x-session-token")


class User(msgspec.Struct, frozen=True, rename="camel"):
    """A Better Auth user, as its get-session reports it."""

    id: str
    email: str | None = None
    name: str | None = None
    email_verified: bool | None = None
    image: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # admin plugin
    role: str | None = None
    banned: bool | None = None
    ban_reason: str | None = None
    ban_expires: dt.datetime | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        """The admin plugin's roles (it keeps them comma-separated in one field)."""
        return tuple(r.strip() for r in (self.role or "").split(",") if r.strip())


class Session(msgspec.Struct, frozen=True, rename="camel"):
    """A Better Auth session, without its token."""

    id: str
    user_id: str
    expires_at: dt.datetime
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    # admin plugin: the admin behind an impersonation; organization plugin: the active one
    impersonated_by: str | None = None
    active_organization_id: str | None = None


class Organization(msgspec.Struct, frozen=True):
    """The session's active organization and the member's role in it (a gateway with GATEWAY_ORGANIZATIONS=on)."""

    id: str
    role: str | None = None  # None: the user is no member of it (any more)

    @property
    def roles(self) -> tuple[str, ...]:
        """The member's roles (Better Auth keeps several comma-separated in one field)."""
        return tuple(r.strip() for r in (self.role or "").split(",") if r.strip())


class Identity(msgspec.Struct, frozen=True):
    """Who a valid session belongs to (``session`` is ``None`` for a JWT of the JWT plugin).

    ``organization``: the active one, from a gateway with organizations on; else ``None``.
    """

    user: User
    session: Session | None
    organization: Organization | None = None


class GatewayUnavailable(Exception):
    """The gateway could not answer (down, overloaded, or its database is): answer 503, not 401."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(GatewayUnavailable):
    """The gateway could not check this credential in time: this caller's lookups found no session too often.

    The credential was not judged (it may be valid): try again after ``retry_after``.
    """


_IDENTITY = msgspec.json.Decoder(Identity)


def _request(token: str | None, headers: Mapping[str, str] | None) -> dict[str, Any]:
    if token is not None:
        return {"json": {"token": token}}
    sent = {k.lower(): v for k, v in (headers or {}).items() if k.lower() in CREDENTIAL_HEADERS}
    return {"headers": sent, "content": b""}


def _answer(response: httpx.Response) -> Identity | None:
    status = response.status_code
    if status == httpx.codes.OK:
        return _IDENTITY.decode(response.content)
    # 401: no valid session; 400/413: what was sent cannot be one (malformed, oversized).
    if status in (httpx.codes.UNAUTHORIZED, httpx.codes.BAD_REQUEST, httpx.codes.REQUEST_ENTITY_TOO_LARGE):
        return None
    retry = response.headers.get("retry-after")
    seconds = float(retry) if retry and retry.isdigit() else None
    if status == httpx.codes.TOO_MANY_REQUESTS:
        raise RateLimited("the gateway's failure budget for this caller is spent: try again", seconds)
    if status == httpx.codes.SERVICE_UNAVAILABLE:
        raise GatewayUnavailable("the gateway cannot reach the session store", seconds)
    # Anything else (404 from a wrong URL, a proxy's 502) is no verdict on the session.
    raise GatewayUnavailable(f"unexpected answer from the gateway: {status} {response.text[:200]!r}")


class GatewayClient:
    """Asks a gateway (``POST /v1/validate``) from asyncio code; one pooled connection set."""

    def __init__(self, base_url: str, *, timeout: float = 2.0, client: httpx.AsyncClient | None = None) -> None:
        self._url = base_url.rstrip("/") + "/v1/validate"
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owned = client is None

    async def validate(self, token: str) -> Identity | None:
        """The identity behind a session token (raw, or signed ``token.signature``), else ``None``."""
        return await self._ask(_request(token, None))

    async def validate_request(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity behind a request's own credential (its Authorization or Cookie), else ``None``."""
        return await self._ask(_request(None, headers))

    async def _ask(self, request: dict[str, Any]) -> Identity | None:
        try:
            response = await self._client.post(self._url, **request)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway did not answer: {exc!r}") from exc
        return _answer(response)

    async def aclose(self) -> None:
        """Close the connections (only those this client opened)."""
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SyncGatewayClient:
    """The same for synchronous code (threads, WSGI)."""

    def __init__(self, base_url: str, *, timeout: float = 2.0, client: httpx.Client | None = None) -> None:
        self._url = base_url.rstrip("/") + "/v1/validate"
        self._client = client or httpx.Client(timeout=timeout)
        self._owned = client is None

    def validate(self, token: str) -> Identity | None:
        """The identity behind a session token (raw, or signed ``token.signature``), else ``None``."""
        return self._ask(_request(token, None))

    def validate_request(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity behind a request's own credential (its Authorization or Cookie), else ``None``."""
        return self._ask(_request(None, headers))

    def _ask(self, request: dict[str, Any]) -> Identity | None:
        try:
            response = self._client.post(self._url, **request)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway did not answer: {exc!r}") from exc
        return _answer(response)

    def close(self) -> None:
        """Close the connections (only those this client opened)."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
