"""The cookies a sliding refresh sets, written as Better Auth 1.7 writes them (better-call ``serializeCookie``).

``<name>=<value>; Max-Age=<s>[; Domain=<d>]; Path=/; HttpOnly[; Secure]; SameSite=Lax``: the
attributes in better-call's order, ``Secure`` exactly when the names carry ``__Secure-``
(``createCookieGetter``), ``Domain`` with ``crossSubDomainCookies`` (``GATEWAY_COOKIE_DOMAIN``).

- ``session_token``: ``encodeURIComponent(<token>.<base64 HMAC-SHA256>)`` with the current
  secret, ``Max-Age = expiresIn`` (``setSessionCookie`` after a refresh);
- ``session_data`` (the cookie cache, when on): a new value for the slid session, as
  ``setCookieCache`` makes it — ``compact`` (HMAC-signed base64url JSON), ``jwt`` (HS256) or
  ``jwe`` (encrypted with the current secret's key), with ``Max-Age = cookieCache.maxAge``. A value
  that would need chunks (over 4050 bytes) is not written: the client keeps the one it has, valid
  until its own window closes;
- ``dont_remember`` is read, never written: a session signed in without "remember me" is not
  slid (Better Auth's rule).
"""

from __future__ import annotations

import base64
import hmac
import math
import os
import uuid
from typing import TYPE_CHECKING

import jwt
import msgspec
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.credentials.cookie_cache import jwe_key, thumbprint
from gateway.credentials.tokens import cookie_value, decode_uri_component, sign

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.core.sessions import Session

_MAX_COOKIE_SIZE = 4050  # better-call's per-cookie ceiling (cookies/session-store.ts)
_SIGNATURE_LENGTH = 44
_JSON = msgspec.json.Encoder()


def encode_uri_component(signed: str) -> str:
    """``encodeURIComponent`` of a ``<token>.<base64>`` value: only ``+``, ``/`` and ``=`` change."""
    return signed.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Cookies:
    """Renders the refresh's ``Set-Cookie`` values for one deployment's names, attributes and secret."""

    def __init__(self, settings: Settings) -> None:
        secure = settings.use_secure_cookies
        self.session_name = settings.cookie_names[0]
        self.data_name = settings.data_cookie_names[0]
        self.dont_remember_name = ("__Secure-" if secure else "") + f"{settings.cookie_prefix}.dont_remember"
        domain = f"; Domain={settings.cookie_domain}" if settings.cookie_domain else ""
        attributes = f"{domain}; Path=/; HttpOnly{'; Secure' if secure else ''}; SameSite=Lax"
        self._session_tail = f"; Max-Age={settings.session_expires_in_s}{attributes}"
        self._data_max_age = math.floor(settings.cookie_cache_max_age_s)
        self._data_tail = f"; Max-Age={self._data_max_age}{attributes}"
        self._strategy = settings.cookie_cache
        self._version = settings.cookie_cache_version
        self._secret = settings.secret.reveal()
        self._key = self._secret.encode()

    def signed(self, token: str) -> str:
        """``<token>.<signature>``, the value of Better Auth's ``set-auth-token`` header (bearer plugin)."""
        return sign(token, self._secret)

    def session_token(self, token: str) -> str:
        """The ``session_token`` cookie for ``token``, with ``Max-Age = expiresIn``."""
        return f"{self.session_name}={encode_uri_component(self.signed(token))}{self._session_tail}"

    def dont_remember(self, cookie_header: str | None) -> bool:
        """Whether the request carries a valid ``dont_remember`` cookie (a signed ``"true"``, as Better Auth checks)."""
        if not cookie_header or self.dont_remember_name not in cookie_header:
            return False
        raw = cookie_value(cookie_header, (self.dont_remember_name,))
        if not raw:
            return False
        value = decode_uri_component(raw) if "%" in raw else raw
        data, _, signature = value.rpartition(".")
        if data != "true" or len(signature) != _SIGNATURE_LENGTH or not signature.endswith("="):
            return False
        try:
            given = base64.b64decode(signature, validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, hmac.digest(self._key, b"true", "sha256"))

    def session_data(self, session: Session, token: str, now: float) -> str | None:
        """A new ``session_data`` cookie for the slid ``session`` (``None``: cookie cache off, or not written)."""
        if self._strategy == "off":
            return None
        now_ms = int(now * 1000)
        payload = {
            "session": {**session.session, "token": token},
            "user": session.user,
            "updatedAt": now_ms,
            "version": self._version,
        }
        if self._strategy in ("jwt", "jwe"):
            iat = int(now)
            claims = payload | {"iat": iat, "exp": iat + self._data_max_age}
            if self._strategy == "jwe":
                value = self._encrypted(claims | {"jti": str(uuid.uuid4())})
            else:
                value = jwt.encode(claims, self._key, algorithm="HS256", headers={"alg": "HS256", "typ": None})
        else:
            expires_at = now_ms + (self._data_max_age or 60) * 1000
            signed = _JSON.encode(payload | {"expiresAt": expires_at})
            signature = _b64url(hmac.digest(self._key, signed, "sha256"))
            outer = {"session": payload, "expiresAt": expires_at, "signature": signature}
            value = _b64url(_JSON.encode(outer))
        cookie = f"{self.data_name}={value}{self._data_tail}"
        return cookie if len(cookie) <= _MAX_COOKIE_SIZE else None

    def _encrypted(self, claims: dict[str, object]) -> str:
        """A compact JWE as jose's ``EncryptJWT`` makes it: ``dir``, ``A256CBC-HS512`` (RFC 7518 §5.2)."""
        key = jwe_key(self._secret)
        header = _b64url(_JSON.encode({"alg": "dir", "enc": "A256CBC-HS512", "kid": thumbprint(key)}))
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        plain = padder.update(_JSON.encode(claims)) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plain) + encryptor.finalize()
        aad = header.encode()
        tag = hmac.digest(key[:32], aad + iv + ciphertext + (len(aad) * 8).to_bytes(8, "big"), "sha512")[:32]
        return f"{header}..{_b64url(iv)}.{_b64url(ciphertext)}.{_b64url(tag)}"
