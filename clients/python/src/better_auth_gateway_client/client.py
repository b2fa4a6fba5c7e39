"""The clients: ``GatewayClient`` for asyncio code, ``SyncGatewayClient`` for threads and WSGI.

Both ask ``POST /v1/validate`` over one pooled httpx client (connections are kept alive and
reused) with a timeout on every phase (connect, write, read, pool), and read the answer in
``protocol``: an ``Identity``, ``None`` for no valid session, or ``GatewayUnavailable`` when the
gateway could not say (answer 503 then, never 401).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

from better_auth_gateway_client import protocol
from better_auth_gateway_client.cache import IdentityCache
from better_auth_gateway_client.errors import GatewayUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Self

    from better_auth_gateway_client.identity import Identity
    from better_auth_gateway_client.protocol import Headers


class _Asking:
    """What both clients share: the URL, the credential fields they send on, the cache."""

    def __init__(
        self,
        base_url: str,
        *,
        cache_ttl_s: float,
        cache_size: int,
        credential_headers: Iterable[str],
        clock: Callable[[], float],
    ) -> None:
        self._url = base_url.rstrip("/") + protocol.PATH
        self._names = frozenset(name.lower() for name in credential_headers)
        self._cache = IdentityCache(cache_ttl_s, cache_size, clock=clock)

    def _token_request(self, token: str) -> tuple[dict[str, Any], str | None]:
        key = protocol.cache_key("token", (token,)) if self._cache.enabled else None
        return protocol.token_body(token), key

    def _fields_request(self, headers: Headers) -> tuple[dict[str, Any], str | None] | None:
        """The request for a request's credential fields; ``None`` when it carries none (no need to ask)."""
        fields = protocol.credential_fields(headers, self._names)
        if not fields:
            return None
        material = (part for field in fields for part in field)
        key = protocol.cache_key("fields", material) if self._cache.enabled else None
        return protocol.fields_body(fields), key

    def _cached(self, key: str | None) -> Identity | None:
        return None if key is None else self._cache.get(key)

    def _keep(self, key: str | None, identity: Identity | None) -> Identity | None:
        if key is not None and identity is not None:
            self._cache.put(key, identity)
        return identity


def _http_options(timeout: float | httpx.Timeout) -> dict[str, Any]:
    # trust_env=False: no HTTP_PROXY or .netrc of the environment carries the users' credentials
    # elsewhere; redirects are not followed (httpx's default), so they are never sent on either.
    return {"timeout": timeout, "trust_env": False, "follow_redirects": False}


class GatewayClient(_Asking):
    """Asks a gateway (``POST /v1/validate``) from asyncio code; one pooled connection set.

    Args:
        base_url: the gateway, e.g. ``http://gateway:8080``.
        timeout: seconds for each phase of a call (or an ``httpx.Timeout``).
        client: an ``httpx.AsyncClient`` to use (then not closed by this one).
        cache_ttl_s: remember valid sessions this long (``cache``: a revocation waits that long); 0: off.
        cache_size: the most sessions remembered.
        credential_headers: the request fields sent on by ``validate_request``.
        clock: the cache's monotonic clock (tests).
    """

    def __init__(  # noqa: PLR0913  (keyword-only options, as httpx's clients take them)
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = 2.0,
        client: httpx.AsyncClient | None = None,
        cache_ttl_s: float = 0.0,
        cache_size: int = 1024,
        credential_headers: Iterable[str] = protocol.CREDENTIAL_HEADERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            base_url, cache_ttl_s=cache_ttl_s, cache_size=cache_size, credential_headers=credential_headers, clock=clock
        )
        self._client = client or httpx.AsyncClient(**_http_options(timeout))
        self._owned = client is None

    async def validate(self, token: str) -> Identity | None:
        """The identity behind a session token (raw, signed ``token.signature``, or a JWT), else ``None``."""
        request, key = self._token_request(token)
        return self._cached(key) or self._keep(key, await self._ask(request))

    async def validate_request(self, headers: Headers) -> Identity | None:
        """The identity behind a request's own credential (its Cookie, Authorization, X-Session-Token), else ``None``.

        ``headers``: the request's headers, a mapping or an ASGI scope's raw pairs. Only the
        credential fields are sent; a request with none is ``None`` without asking.
        """
        prepared = self._fields_request(headers)
        if prepared is None:
            return None
        request, key = prepared
        return self._cached(key) or self._keep(key, await self._ask(request))

    async def _ask(self, request: dict[str, Any]) -> Identity | None:
        try:
            response = await self._client.post(self._url, **request)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway did not answer: {type(exc).__name__}: {exc}") from exc
        return protocol.answer(response)

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


class SyncGatewayClient(_Asking):
    """The same for synchronous code (threads, WSGI); safe to share between threads.

    Takes the arguments of ``GatewayClient``, with an ``httpx.Client`` as ``client``.
    """

    def __init__(  # noqa: PLR0913  (keyword-only options, as httpx's clients take them)
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = 2.0,
        client: httpx.Client | None = None,
        cache_ttl_s: float = 0.0,
        cache_size: int = 1024,
        credential_headers: Iterable[str] = protocol.CREDENTIAL_HEADERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            base_url, cache_ttl_s=cache_ttl_s, cache_size=cache_size, credential_headers=credential_headers, clock=clock
        )
        self._client = client or httpx.Client(**_http_options(timeout))
        self._owned = client is None

    def validate(self, token: str) -> Identity | None:
        """The identity behind a session token (raw, signed ``token.signature``, or a JWT), else ``None``."""
        request, key = self._token_request(token)
        return self._cached(key) or self._keep(key, self._ask(request))

    def validate_request(self, headers: Headers) -> Identity | None:
        """The identity behind a request's own credential fields, else ``None`` (see ``GatewayClient``)."""
        prepared = self._fields_request(headers)
        if prepared is None:
            return None
        request, key = prepared
        return self._cached(key) or self._keep(key, self._ask(request))

    def _ask(self, request: dict[str, Any]) -> Identity | None:
        try:
            response = self._client.post(self._url, **request)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway did not answer: {type(exc).__name__}: {exc}") from exc
        return protocol.answer(response)

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
