"""Credentials: find them in a request, check them exactly as Better Auth does. No I/O.

Better Auth's rules (``docs/better-auth.md`` §2 and §4, better-call ``parseCookies`` and
``getSignedCookie``, the bearer plugin):

- cookie ``<prefix>.session_token``, or ``__Secure-<prefix>.session_token`` on an https
  deployment (exactly one of the two, as configured: ``Settings.cookie_names``): the first
  occurrence wins, the value is trimmed, a leading ``"`` strips one character from each end,
  and it is percent-decoded only if it contains ``%`` (kept raw if that fails). It must be
  ``<token>.<base64 HMAC-SHA256>`` with a 44-character padded signature, made with the
  *current* secret;
- ``Authorization: Bearer <x>`` (scheme case-insensitive, value trimmed): with a ``.`` it is a
  signed value as above (percent-decoded first); without one it is a raw token, accepted unless
  signatures are required. Another scheme is not a Better Auth credential and is ignored.

The gateway adds ``X-Session-Token`` (and the JSON body's ``token``) with the bearer rules, for
internal callers. Unlike Better Auth, a credential that is present but invalid is refused: the
gateway never falls through to the next one.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, NamedTuple, Protocol
from urllib.parse import unquote

from gateway.core.sessions import Reason

if TYPE_CHECKING:
    from collections.abc import Iterator


class Headers(Protocol):
    """A request's headers, as granian's ``RSGIHeaders`` gives them (the HTTP adapter passes those)."""

    def get(self, key: str, /) -> str | None: ...  # noqa: D102
    def get_all(self, key: str, /) -> list[str]: ...  # noqa: D102
    def keys(self) -> list[str]: ...  # noqa: D102


def token_hash(token: str) -> str:
    """SHA-256 of a token, hex: the only form of a token that leaves the process."""
    return hashlib.sha256(token.encode()).hexdigest()


# JavaScript's String.prototype.trim() whitespace, which better-call's parser uses.
_JS_WHITESPACE = (
    " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
JS_WHITESPACE = _JS_WHITESPACE  # for the modules that must read cookie names as better-call does
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LEGACY_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_TOKEN_LENGTH = 32  # generateId(32): always the length of a Better Auth >= 1.0 session token
_SIGNATURE_LENGTH = 44  # standard base64 of 32 bytes, with its one '=' of padding
_BEARER = "bearer "
_COOKIE_KEY = ";"  # no cookie value contains one, and no key of another kind starts with one


class Kind(enum.IntEnum):
    """Where a credential came from; it decides which parsing rules apply."""

    bearer = 1
    header = 2  # X-Session-Token or a JSON body's "token": bearer rules
    cookie = 3
    api_key = 4  # the API key plugin's header (gateway.credentials.api_keys)


class Credential(NamedTuple):
    """A credential as presented, before any check.

    ``key`` determines the outcome of the check by itself (it embeds the kind), so the
    in-process cache can be keyed on it and a hit needs no HMAC: only values that passed the
    check are ever stored under their key. The key spaces of the kinds cannot overlap, whatever
    the client sends: a bearer key is the Authorization field itself, which starts with
    ``bearer `` in some case; a header key starts with ``x:``; a cookie key starts with ``;``,
    which neither of those can, and which no cookie value can contain (``cookie_pairs`` ends a
    value there), so a cookie spelled as another kind's key (``Bearer <signed>``, ``x:<token>``,
    or a raw token its kind accepts unsigned) never reaches another kind's entry.
    """

    key: str
    kind: Kind
    value: str
    cached: str | None = None  # the cookie cache (session_data) sent along a cookie, when read


def find_credential(
    authorization: str | None,
    session_header: str | None,
    cookie: str | None,
    cookie_names: tuple[str, ...],
) -> Credential | None:
    """Return the credential a request carries, in Better Auth's order, or ``None``."""
    if authorization is not None and authorization[:7].lower() == _BEARER:
        value = authorization[7:].strip(_JS_WHITESPACE)
        if value:
            return Credential(authorization, Kind.bearer, value)
    if session_header:
        return header_credential(session_header)
    if cookie is not None:
        return (
            _remembered_cookie_credential(cookie, cookie_names)
            if len(cookie) <= _MEMO_MAX
            else cookie_credential(cookie, cookie_names)
        )
    return None


def cookie_credential(header: str, names: tuple[str, ...]) -> Credential | None:
    """The session cookie of a Cookie header as a credential (its key: ``Credential``), or ``None``."""
    found = cookie_value(header, names)
    return Credential(_COOKIE_KEY + found, Kind.cookie, found) if found else None


def header_credential(value: str) -> Credential:
    """Wrap a token given as a plain value (``X-Session-Token``, a JSON body's ``token``)."""
    return Credential("x:" + value, Kind.header, value.strip(_JS_WHITESPACE))


def cookie_header(headers: Headers) -> str | None:
    """The request's Cookie fields as one value, joined with ``"; "`` as Node.js joins them.

    A client may send several Cookie fields (HTTP/2 clients split cookies that way, RFC 9113
    §8.2.3): Better Auth sees them all, in order, so the gateway reads them all too.
    """
    values = headers.get_all("cookie")
    if not values:
        return None
    return values[0] if len(values) == 1 else "; ".join(values)


def cookie_pairs(header: str) -> Iterator[tuple[str, str]]:
    """The ``(name, value)`` pairs of a Cookie header in order, as better-call's ``parseCookies`` reads them.

    Values are trimmed and unquoted, not yet percent-decoded; a caller keeps the first
    occurrence of a name, as better-call does.
    """
    index, length = 0, len(header)
    while index < length:
        eq = header.find("=", index)
        if eq == -1:
            break
        end = header.find(";", index)
        if end == -1:
            end = length
        elif end < eq:
            index = header.rfind(";", 0, eq) + 1
            continue
        value = header[eq + 1 : end].strip(_JS_WHITESPACE)
        yield header[index:eq].strip(_JS_WHITESPACE), value[1:-1] if value[:1] == '"' else value
        index = end + 1


def cookie_value(header: str, names: tuple[str, ...]) -> str | None:
    """Return the (undecoded) value of the first of ``names`` present in a Cookie header.

    The first occurrence of a name wins, and ``names`` are in order of preference.
    """
    if names[-1] not in header:  # cheap: the name (of two, the plain one: in the __Secure- one too)
        return None
    found: dict[str, str] = {}
    for name, value in cookie_pairs(header):
        if name in names and name not in found:
            found[name] = value
            if name == names[0]:
                break
    return next((found[n] for n in names if n in found), None)


# A browser sends the same Cookie header with every request until one of its cookies changes:
# parsing it costs 1-2 µs, remembering the answer about 0.2. Bounded in entries and in the
# length of what is remembered, so forged headers cannot grow it.
_MEMO_MAX = 2048
# The credential is remembered whole (immutable), so a cookie's key costs the hit path nothing.
_remembered_cookie_credential = functools.lru_cache(maxsize=4096)(cookie_credential)


# The escapes ``encodeURIComponent`` makes of a signed value (``_encode``), in either case.
_SIGNED_ESCAPES = (("%2B", "+"), ("%2F", "/"), ("%3D", "="), ("%2b", "+"), ("%2f", "/"), ("%3d", "="))


def decode_uri_component(value: str) -> str:
    """Percent-decode like JavaScript's ``decodeURIComponent``; on failure return ``value``."""
    # A signed cookie as Better Auth sets it holds only these escapes: six replaces are a fifth
    # of ``unquote`` (2.2 µs). Escapes can't overlap, and none decodes to "%": if no "%" is
    # left, each one was a whole escape and the decoding is decodeURIComponent's.
    decoded = value
    for escape, char in _SIGNED_ESCAPES:
        decoded = decoded.replace(escape, char)
    if "%" not in decoded:
        return decoded
    if _BAD_ESCAPE.search(value):
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return value


class Proof(NamedTuple):
    """What a credential proves: its session token, and the key everything below the check uses.

    ``key`` is the credential's *home* key: the key it would have if spelled as Better Auth writes
    it, in the same style as sent (percent-encoded as ``encodeURIComponent`` encodes it, or not at
    all), with the canonical signature. Better Auth accepts every percent-encoded spelling of a
    signed value (2^n of them), every spelling of a padded signature's last character and, for a
    bearer, any case of the scheme: keyed by spelling, each would be a new cache entry and a new
    lookup. Keyed by its home, a respelling of a cached (or known absent) session costs an HMAC
    and a dict lookup, and one token has at most two homes per kind.
    """

    token: str
    key: str


def _encode(signed: str) -> str:
    """``encodeURIComponent`` of a ``<token>.<base64>`` value (only ``+``, ``/`` and ``=`` change)."""
    return signed.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


_PREFIX = {Kind.cookie: _COOKIE_KEY, Kind.bearer: "Bearer ", Kind.header: "x:"}
_PREFIX_LENGTH = {prefix[0]: len(prefix) for prefix in _PREFIX.values()}


def home_token(key: str) -> str:
    """The token a *home* key (``Proof.key``) names, read off the key: no HMAC.

    Only home keys of credentials that passed the check are ever cached, so the key of a cache
    hit already proves its token: it is the key less its kind's prefix, up to the signature's
    dot (a token, legacy ids too, holds neither ``.`` nor ``%``: ``plausible``).
    """
    return key[_PREFIX_LENGTH[key[0]] :].partition(".")[0]


class Verifier:
    """Turns a credential into the session token it proves, or the reason it proves nothing."""

    __slots__ = ("_accept_unsigned", "_key", "_legacy_ids")

    def __init__(self, secret: str, *, accept_unsigned: bool, legacy_ids: bool = False) -> None:
        self._key = secret.encode()
        self._accept_unsigned = accept_unsigned
        self._legacy_ids = legacy_ids

    def token(self, credential: Credential) -> str | Reason:
        """Return the token ``credential`` proves, or the ``Reason`` it is refused."""
        proof = self.prove(credential)
        return proof if isinstance(proof, Reason) else proof.token

    def prove(self, credential: Credential) -> Proof | Reason:
        """Return the token ``credential`` proves and its home key, or the ``Reason`` it is refused."""
        value = credential.value
        if credential.kind is Kind.cookie or "." in value:
            encoded = "%" in value
            checked = self._check_signed(decode_uri_component(value) if encoded else value)
            if isinstance(checked, Reason):
                return checked
            token, mac = checked
            signed = f"{token}.{base64.b64encode(mac).decode()}"
            return Proof(token, _PREFIX[credential.kind] + (_encode(signed) if encoded else signed))
        if not self._accept_unsigned:
            return Reason.unsigned_token
        return Proof(value, _PREFIX[credential.kind] + value) if self.plausible(value) else Reason.malformed

    def _check_signed(self, value: str) -> tuple[str, bytes] | Reason:
        """Check ``<token>.<signature>``; return the token and its MAC."""
        dot = value.rfind(".")
        if dot < 1:
            return Reason.malformed
        token, signature = value[:dot], value[dot + 1 :]
        if len(signature) != _SIGNATURE_LENGTH or signature[-1] != "=" or not self.plausible(token):
            return Reason.malformed
        try:
            # A str with a non-ASCII character makes b64decode raise a plain ValueError (of
            # which binascii.Error, for a bad alphabet or padding, is a subclass).
            given = base64.b64decode(signature, validate=True)
        except ValueError:
            return Reason.malformed
        expected = hmac.digest(self._key, token.encode(), "sha256")
        return (token, expected) if hmac.compare_digest(given, expected) else Reason.bad_signature

    def plausible(self, token: str) -> bool:
        """Whether ``token`` could be a session token at all (checked before any I/O)."""
        if self._legacy_ids:  # Better Auth < 1.0 used session.id, whose shape varies
            return _LEGACY_TOKEN.fullmatch(token) is not None
        return len(token) == _TOKEN_LENGTH and token.isascii() and token.isalnum()


def sign(token: str, secret: str) -> str:
    """Return ``<token>.<signature>`` as Better Auth signs it (before percent-encoding)."""
    mac = hmac.digest(secret.encode(), token.encode(), "sha256")
    return f"{token}.{base64.b64encode(mac).decode()}"
