"""Better Auth's cookie cache (``session_data``), checked locally: a valid one needs no lookup.

Opt-in (``GATEWAY_COOKIE_CACHE=compact|jwt|jwe``, the strategy Better Auth is configured with);
``docs/better-auth.md`` §3 has the formats. Better Auth accepts a cached payload only if
its signature (or decryption) holds, it names the very session token the request proved,
its ``version`` is the configured one, its window (``maxAge``) is still open, and the session
has not expired; the gateway applies the same rules, nothing looser.

The price is Better Auth's own: a session revoked in the database stays valid, from its cookie,
until the cookie's window closes (``maxAge``, 300 s by default). The gateway narrows that where
it can: a token or user it has heard revoked (the invalidation triggers) is refused from the
cookie for ``maxAge`` afterwards.
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import hmac
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core import strict_json
from gateway.core.sessions import Session
from gateway.credentials.tokens import cookie_pairs, decode_uri_component

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.core.fields import Fields

Strategy = Literal["compact", "jwt", "jwe"]
_MAX_CHUNKS = 100  # Better Auth skips the cache rather than write more
_JWE_SALT = b"better-auth-session"
_JWE_INFO = b"BetterAuth.js Generated Encryption Key"
# Better Auth's JSON reviver turns strings of this shape into Dates (core/utils/json.ts).
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?Z$")
# Better Auth's cookie parser for chunks (cookies/cookie-utils.ts): RFC 6265 names and values.
_COOKIE_NAME = re.compile(r"[\x21\x23-\x27\x2A\x2B\x2D\x2E\x30-\x39\x41-\x5A\x5E-\x7A\x7C\x7E]+")
_COOKIE_VALUE = re.compile(r"[\x20\x21\x23-\x3A\x3C-\x5B\x5D-\x7E]*")
_INDEX = re.compile(r"0|[1-9][0-9]{0,14}")
# jose decodes JWS and JWE segments as base64url: no other alphabet, padding only if right.
_JOSE_SEGMENT = re.compile(r"[A-Za-z0-9_\-]*={0,2}")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding (JavaScript's decoders accept either alphabet)."""
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))


def data_cookie(header: str, names: tuple[str, ...]) -> str | None:
    """The ``session_data`` value: the first of ``names`` present, else its chunks ``<name>.0 … <name>.N``.

    Chunks are joined in numeric order, as Better Auth's session store reads them.
    """
    found: dict[str, str] = {}
    for name, value in cookie_pairs(header):
        found.setdefault(name, value)
    for name in names:
        if found.get(name):  # an empty one is absent: Better Auth then reads the chunks
            return decode_uri_component(found[name]) if "%" in found[name] else found[name]
    for name in names:
        chunks = _chunks(header, name + ".")
        if chunks and len(chunks) <= _MAX_CHUNKS:
            return "".join(value for _, value in sorted(chunks.items()))
    return None


def _chunks(header: str, prefix: str) -> dict[int, str]:
    """The chunks ``<prefix><n>``, read as Better Auth's ``getChunkedCookie`` reads them.

    That is its own cookie parser, not better-call's: the *last* of a repeated name wins, names
    and values outside RFC 6265's characters are skipped, and ``n`` is a decimal integer
    written the canonical way (``01`` is not chunk 1).
    """
    chunks: dict[int, str] = {}
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not eq or not key.startswith(prefix):
            continue
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = value[1:-1]
        index = key[len(prefix) :]
        if not _COOKIE_NAME.fullmatch(key) or not _COOKIE_VALUE.fullmatch(value) or not _INDEX.fullmatch(index):
            continue
        chunks[int(index)] = decode_uri_component(value) if "%" in value else value
    return chunks


class CookieCache:
    """Opens ``session_data`` values of one strategy, under Better Auth's acceptance rules."""

    def __init__(
        self,
        strategy: Strategy,
        secrets: tuple[str, ...],
        *,
        version: str = "1",
        clock: Callable[[], float] = time.time,
        fields: Fields | None = None,
    ) -> None:
        self.strategy = strategy
        self._fields = fields  # what Better Auth returns: the rest of a cookie is never answered
        self._current = secrets[0].encode()  # compact and jwt: the current secret only
        self._version = version
        self._clock = clock
        # jwe: every secret's key, by its RFC 7638 thumbprint (the JWE's kid names the one used).
        self._jwe_keys = {thumbprint(k): k for k in (jwe_key(s) for s in secrets)}

    def open(self, value: str, token: str) -> Session | None:  # noqa: PLR0911  (one return per rule of Better Auth's)
        """The session ``value`` vouches for, if Better Auth would accept it for ``token``; else ``None``."""
        try:
            payload = self._payload(value)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, OverflowError):
            # Whatever a forged value is made of, it vouches for nothing (UnicodeError and
            # binascii.Error are ValueErrors; OverflowError: a number too big for a float).
            return None
        if not isinstance(payload, dict):
            return None
        session, user = payload.get("session"), payload.get("user")
        if not isinstance(session, dict) or not isinstance(user, dict):
            return None
        if not isinstance(session.get("token"), str) or not hmac.compare_digest(session["token"], token):
            return None
        if str(payload.get("version") or "1") != self._version:
            return None
        try:
            found = Session.from_better_auth(session, user, self._fields)
        except (ValueError, OverflowError):
            return None
        return found if found.expires_at >= self._clock() else None

    def _payload(self, value: str) -> Any:
        if self.strategy == "compact":
            return self._compact(value)
        if not all(_jose_segment(part) for part in value.split(".")):
            return None
        if self.strategy == "jwt":
            return self._jwt(value)
        return self._jwe(value)

    def _compact(self, value: str) -> Any:
        """``base64url(JSON {session: P, expiresAt, signature})``, signed over ``JSON.stringify({...P, expiresAt})``.

        Better Auth parses the JSON, then checks the HMAC over its own serialisation of what it
        parsed; so does the gateway, and the object it uses is the very one whose bytes were
        verified (issue 13, finding 1). A document with a repeated key, at any depth, is refused
        (``strict_json``): it has two readings, and no Better Auth writes one.
        """
        outer = strict_json.loads(b64url_decode(value).decode())
        session, expires, signature = outer["session"], outer["expiresAt"], outer["signature"]
        if not isinstance(session, dict) or not isinstance(signature, str) or _number(expires) == -math.inf:
            return None
        signed = json.dumps(session | {"expiresAt": expires}, separators=(",", ":"), ensure_ascii=False)
        expected = hmac.digest(self._current, signed.encode(), "sha256")
        if not hmac.compare_digest(b64url_decode(signature), expected):
            return None
        if expires < self._clock() * 1000 or _rewritten_by_javascript(session):
            return None
        return session

    def _jwt(self, value: str) -> Any:
        """A JWS, HS256 with the current secret; ``exp`` with no tolerance."""
        head, body, signature = value.split(".")
        if strict_json.loads(b64url_decode(head)).get("alg") != "HS256":
            return None
        expected = hmac.digest(self._current, f"{head}.{body}".encode(), "sha256")
        if not hmac.compare_digest(b64url_decode(signature), expected):
            return None
        claims = strict_json.loads(b64url_decode(body))
        return claims if _number(claims.get("exp")) > self._clock() else None

    def _jwe(self, value: str) -> Any:
        """A compact JWE, ``dir`` + ``A256CBC-HS512`` (RFC 7518 §5.2), keyed from the secrets."""
        head, encrypted_key, iv, ciphertext, tag = value.split(".")
        header = strict_json.loads(b64url_decode(head))
        if header.get("alg") != "dir" or header.get("enc") != "A256CBC-HS512" or encrypted_key:
            return None
        keys = [self._jwe_keys[header["kid"]]] if "kid" in header and header["kid"] in self._jwe_keys else []
        if "kid" not in header:
            keys = list(self._jwe_keys.values())
        aad, iv_bytes, cipher_bytes = head.encode(), b64url_decode(iv), b64url_decode(ciphertext)
        for key in keys:
            mac_key, enc_key = key[:32], key[32:]
            mac_input = aad + iv_bytes + cipher_bytes + (len(aad) * 8).to_bytes(8, "big")
            if not hmac.compare_digest(hmac.digest(mac_key, mac_input, "sha512")[:32], b64url_decode(tag)):
                continue
            decryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv_bytes)).decryptor()
            unpadder = padding.PKCS7(128).unpadder()
            padded = decryptor.update(cipher_bytes) + decryptor.finalize()
            claims = strict_json.loads(unpadder.update(padded) + unpadder.finalize())
            # jose would allow 15 s of tolerance, but get-session then refuses a cache whose
            # exp (in ms) is past: the window ends at exp, as for the other strategies.
            return claims if _number(claims.get("exp")) >= self._clock() else None
        return None


def jwe_key(secret: str) -> bytes:
    """The cookie cache's 64-byte JWE key for ``secret`` (HKDF-SHA256, Better Auth's salt and info)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=_JWE_SALT, info=_JWE_INFO)
    return hkdf.derive(secret.encode())


def thumbprint(key: bytes) -> str:
    """The RFC 7638 thumbprint of ``key`` as an ``oct`` JWK: the ``kid`` Better Auth writes."""
    jwk = '{"k":"' + base64.urlsafe_b64encode(key).rstrip(b"=").decode() + '","kty":"oct"}'
    return base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()


_jwe_key, _thumbprint = jwe_key, thumbprint  # the names the tests knew them by


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -math.inf


def _jose_segment(text: str) -> bool:
    return _JOSE_SEGMENT.fullmatch(text) is not None and (not text.endswith("=") or len(text) % 4 == 0)


def _v8_iso(text: str) -> str | None:
    """``new Date(text).toISOString()`` for a string of the reviver's shape; ``None`` for an Invalid Date."""
    m = _ISO.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    millis = int(((m.group(7) or "") + "000")[:3])
    if not (1 <= month <= 12 and 1 <= day <= 31 and minute <= 59 and second <= 59):  # noqa: PLR2004
        return None
    if hour > 24 or (hour == 24 and (minute or second or millis)):  # noqa: PLR2004
        return None
    days = calendar.timegm((year, month, 1, 0, 0, 0)) // 86400 + day - 1  # V8 rolls day overflow on
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(days=days, hours=hour, minutes=minute, seconds=second)  # noqa: DTZ001
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def _rewritten_by_javascript(value: object) -> bool:
    """Whether Better Auth's parser would change some string (so its signature check would fail)."""
    if isinstance(value, str):
        canonical = _v8_iso(value) if _ISO.match(value) else None
        return canonical is not None and canonical != value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_rewritten_by_javascript(child) for child in children)
