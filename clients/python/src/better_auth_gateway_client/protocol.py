"""``POST /v1/validate``: what a client sends, and what each answer means. No I/O.

Sent: ``{"token": ...}`` for a token in hand, or a request's own credential fields (Cookie,
Authorization, X-Session-Token) and nothing else of it: no other header, no body.

Answered (README, "Endpoints"): 200 an identity; 401 no valid session, and 400/413 a credential
that cannot be one (malformed, oversized): ``None``. 429 and 503 are ``RateLimited`` and
``GatewayUnavailable``, and so is any other answer (a 404 from a wrong URL, a proxy's 502, a
redirect): it is no verdict on the session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from better_auth_gateway_client.errors import GatewayUnavailable, RateLimited
from better_auth_gateway_client.identity import Identity, MalformedAnswer, decode_identity

if TYPE_CHECKING:
    from collections.abc import Iterable

    import httpx

    HeaderPairs = Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]
    Headers = Mapping[str, str] | HeaderPairs

CREDENTIAL_HEADERS = ("cookie", "authorization", "x-session-token")
"""The request fields that carry a Better Auth credential; the rest of a request is not sent on."""

PATH = "/v1/validate"
_NO_SESSION = frozenset({400, 401, 413})
_MAX_RETRY_AFTER_S = 86_400


def credential_fields(headers: Headers, names: frozenset[str]) -> list[tuple[str, str]]:
    """The fields of ``headers`` named in ``names`` (lower case), every one and in order.

    ``headers``: a mapping (a dict, Starlette's ``Headers``, httpx's ``Headers``) or the raw
    ``(name, value)`` pairs of an ASGI scope. Repeated fields are all kept, as the gateway
    reads them (an HTTP/2 client splits its Cookie into several).
    """
    multi = getattr(headers, "multi_items", None)  # httpx.Headers: items() would join repeats with ", "
    pairs: Iterable[tuple[Any, Any]]
    if callable(multi):
        pairs = multi()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    fields = []
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        if key.lower() in names:
            fields.append((key.lower(), value.decode("latin-1") if isinstance(value, bytes) else value))
    return fields


def token_body(token: str) -> dict[str, Any]:
    """The request arguments for a token in hand (raw, signed ``token.signature``, or a JWT)."""
    return {"json": {"token": token}}


def fields_body(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """The request arguments for a request's credential fields (an empty body: the gateway reads the headers)."""
    return {"headers": fields, "content": b""}


def cache_key(kind: str, material: Iterable[str]) -> str:
    """A key for what was sent: the SHA-256 of it, so that no credential is ever kept or shown as it is.

    Each part is length-prefixed: no two different sequences of parts have one encoding.
    """
    digest = hashlib.sha256(kind.encode())
    for part in material:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def answer(response: httpx.Response) -> Identity | None:
    """The identity in the gateway's answer, ``None`` for no valid session; raise when there is no verdict."""
    status = response.status_code
    if status == 200:  # noqa: PLR2004  (HTTP statuses read better as numbers)
        try:
            return decode_identity(response.content)
        except MalformedAnswer as exc:
            raise GatewayUnavailable(f"the gateway's 200 holds no identity ({exc}): is the URL a gateway's?") from exc
    if status in _NO_SESSION:
        return None
    retry_after = _seconds(response.headers.get("retry-after"))
    if status == 429:  # noqa: PLR2004
        raise RateLimited("the gateway's failure budget for this caller is spent: try again", retry_after)
    if status == 503:  # noqa: PLR2004
        raise GatewayUnavailable("the gateway cannot reach the session store", retry_after)
    # The body is left out: an unknown server's body could echo what it was sent.
    raise GatewayUnavailable(f"unexpected answer from the gateway: HTTP {status}")


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (its date form aside), at most a day."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    return float(min(int(value[:6]), _MAX_RETRY_AFTER_S))
