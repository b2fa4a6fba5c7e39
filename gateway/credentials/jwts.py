"""Better Auth's JWT plugin: its JWTs checked against its own public keys (opt-in).

``GET /api/auth/token`` (and the ``set-auth-jwt`` header) hands out short-lived JWTs signed with
the key pairs in Better Auth's ``jwks`` table (EdDSA by default; ES256, ES512, RS256, PS256);
``GET /api/auth/jwks`` publishes the public halves (``docs/better-auth.md`` §5). With
``GATEWAY_JWT_AUDIENCE`` set, ``Authorization: Bearer <JWT>`` on ``/validate`` and
``/v1/validate`` is verified here: the key named by ``kid``, the algorithm that key is for,
``exp`` (no leeway, as jose), ``aud`` and, when configured, ``iss``. The claims carry the whole
user; there is no session behind a JWT, so a sign-out does not end one before its ``exp``
(Better Auth's own design: its docs say to keep JWTs short-lived).

Keys come from the ``jwks`` table (or from the ``/jwks`` URL when one is configured), are kept
in memory, and are fetched again when a token names an unknown ``kid`` (rotation), at most
once per ``refetch_s`` so that forged ``kid`` values cannot turn into a flood of fetches.

An unknown ``kid`` is a forgery only when the key set is known to be current: if the last fetch
failed (Postgres or Better Auth down), the verdict is ``backend_unavailable`` (503), never
``bad_signature`` (401), which would log every JWT caller out during an outage. A failed fetch
is retried after ``retry_s``; a known ``kid`` keeps verifying with the keys already loaded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.request
from typing import TYPE_CHECKING, Any, Protocol

import jwt
import jwt.utils

from gateway.core import strict_json
from gateway.core.errors import BackendUnavailable
from gateway.core.sessions import Reason, Session

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.credentials.jwts")

ALGORITHMS = ("EdDSA", "ES256", "ES512", "RS256", "PS256")
_REGISTERED = frozenset({"iat", "exp", "nbf", "iss", "aud", "sub", "jti"})


def looks_like_jwt(value: str) -> bool:
    """Three dot-separated parts with a JSON header: never a Better Auth session token."""
    return value.startswith("eyJ") and value.count(".") == 2  # noqa: PLR2004


class _StrictJWT(jwt.PyJWT):
    """PyJWT, but claims with a duplicate key are refused (``strict_json``), not read as the last."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            claims = strict_json.loads(decoded["payload"])
        except (ValueError, RecursionError) as exc:
            raise jwt.DecodeError(str(exc)) from exc
        if not isinstance(claims, dict):
            msg = "the claims are not a JSON object"
            raise jwt.DecodeError(msg)
        return claims


_JWT = _StrictJWT()


def _header(token: str) -> Any:
    """The JOSE header, refused if ambiguous: PyJWT reads the same bytes again, with no other reading."""
    return strict_json.loads(jwt.utils.base64url_decode(token.partition(".")[0]))


class KeySource(Protocol):
    """Where the public keys come from."""

    def __call__(self) -> Awaitable[list[dict[str, Any]]]:
        """The public JWKs, each with its ``kid``."""
        ...


def endpoint_keys(url: str, timeout_s: float) -> KeySource:
    """Keys from Better Auth's ``/api/auth/jwks`` (fetched in a thread: one small GET, rarely)."""

    def fetch() -> list[dict[str, Any]]:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310  (configured URL)
            body = json.load(response)
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):  # not a key set (a proxy's error page...): nothing was learnt
            msg = f"{url} did not answer a JWK set"
            raise ValueError(msg)  # noqa: TRY004  (bad data, reported as such)
        return [k for k in keys if isinstance(k, dict)]

    async def load() -> list[dict[str, Any]]:
        return await asyncio.to_thread(fetch)

    return load


class JwtVerifier:
    """Verifies Better Auth JWTs; turns their claims into a ``Session`` with no session row."""

    def __init__(  # noqa: PLR0913  (keyword-only knobs)
        self,
        source: KeySource,
        *,
        audience: str,
        issuer: str = "",
        refetch_s: float = 30.0,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._audience = audience
        self._issuer = issuer or None
        self._refetch_s = refetch_s
        self._retry_s = min(retry_s, refetch_s)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        self._current = False  # the last fetch succeeded: a kid missing from the keys is unknown

    async def verify(self, token: str) -> Session | Reason:
        """The identity a JWT carries, or why it is refused."""
        try:
            kid = _header(token).get("kid")
        except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError, RecursionError):
            return Reason.malformed
        if not isinstance(kid, str):
            return Reason.bad_signature
        key = self._keys.get(kid) or await self._key_after_refetch(kid)
        if key is None:
            # Unknown to a key set we could not read is not unknown: the source is down.
            return Reason.bad_signature if self._current else Reason.backend_unavailable
        claims = self._claims(token, key)
        if isinstance(claims, Reason):
            return claims
        user = {k: v for k, v in claims.items() if k not in _REGISTERED}
        user.setdefault("id", claims["sub"])
        if user["id"] != claims["sub"]:
            return Reason.invalid_jwt
        role = user.get("role")
        return Session(float(claims["exp"]), 0.0, {}, user, role if isinstance(role, str) else None)

    def _claims(self, token: str, key: jwt.PyJWK) -> dict[str, Any] | Reason:
        try:
            claims: dict[str, Any] = _JWT.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                # jose checks no iat (a key's clock ahead of ours is no reason to refuse).
                options={"require": ["exp", "sub", "aud"], "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            return Reason.expired
        except jwt.InvalidSignatureError:
            return Reason.bad_signature
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            return Reason.invalid_jwt
        if any(k in claims and _number(claims[k]) is None for k in ("exp", "nbf", "iat")):
            return Reason.invalid_jwt  # jose requires numbers; PyJWT would also take "123"
        return claims

    async def _key_after_refetch(self, kid: str) -> jwt.PyJWK | None:
        interval = self._refetch_s if self._current else self._retry_s
        if self._fetching is None and self._clock() - self._fetched_at >= interval:
            self._fetched_at = self._clock()
            self._fetching = asyncio.ensure_future(self._refetch())
        if self._fetching is not None:
            task = self._fetching
            await asyncio.shield(task)
            if self._fetching is task:
                self._fetching = None
        return self._keys.get(kid)

    async def _refetch(self) -> None:
        try:
            found = await self._source()
        except (OSError, ValueError, TypeError, KeyError, http.client.HTTPException, BackendUnavailable) as exc:
            # The table or the endpoint could not be read: keep the keys we have, say why, and
            # answer 503 for the kids they lack until a fetch succeeds.
            log.warning("could not fetch the JWT plugin's public keys: %s", exc)
            self._current = False
            return
        keys = {}
        for data in found:
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:  # a key it cannot use
                log.warning("ignored a public key (kid %s): %s", data.get("kid"), exc)
                continue
            if key.algorithm_name in ALGORITHMS and isinstance(data.get("kid"), str):
                keys[data["kid"]] = key
        self._keys = keys
        self._current = True


def _number(value: object) -> float | None:
    """A JSON number as a float; ``None`` for anything else, or for an integer no float holds (10**400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # even signed: no time anyone can check
        return None
