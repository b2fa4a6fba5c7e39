"""What the HTTP adapter sends: identity headers, deny headers and JSON bodies, built once.

Constant header lists are made at import or construction time; the allow headers of a session
are made once per cache entry, so a cache hit sends a list that already exists.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.sessions import Reason, Session

JSON = msgspec.json.Encoder()

IDENTITY_HEADERS = (
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-name",
    "x-auth-request-session-id",
    "x-auth-request-role",
)
JSON_TYPE = ("content-type", "application/json")
NO_STORE = ("cache-control", "no-store")
# A header value may not carry control characters (CR/LF would split the response), and
# granian sends values as Latin-1: anything else is percent-encoded, as oauth2-proxy does.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]|[^\x00-\xff]")


def header_value(value: Any) -> str:
    """Render a field for a response header; ``None`` becomes the empty string."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def allow_headers(session: Session) -> list[tuple[str, str]]:
    """The 200 headers of ``/validate``: every identity header, empty when unknown."""
    user = session.user
    values = (user.get("id"), user.get("email"), user.get("name"), session.session.get("id"), user.get("role"))
    return [(name, header_value(v)) for name, v in zip(IDENTITY_HEADERS, values, strict=True)]


class Denials:
    """The deny responses' headers, one list per reason, built once."""

    def __init__(self, retry_after_s: int) -> None:
        realm = 'Bearer realm="better-auth-gateway"'
        self.unavailable = [NO_STORE, ("retry-after", str(retry_after_s))]
        self.unauthenticated = {
            reason: [
                ("www-authenticate", realm if reason is Reason.no_credentials else realm + ', error="invalid_token"'),
                NO_STORE,
                ("x-auth-reason", reason.value),
            ]
            for reason in Reason
        }
        self.json_unavailable = [JSON_TYPE, *self.unavailable]
        self.json_unauthenticated = {r: [JSON_TYPE, *h] for r, h in self.unauthenticated.items()}


def identity(session: Session) -> bytes:
    """The body of ``POST /v1/validate`` on success: user and session, without the token."""
    return JSON.encode({"user": session.user, "session": session.session})


def better_auth_session(session: Session, token: str) -> bytes:
    """The body Better Auth's ``GET /api/auth/get-session`` returns for a valid session."""
    return JSON.encode({"session": {**session.session, "token": token}, "user": session.user})


def error(kind: str, reason: str) -> bytes:
    """A JSON error body: ``{"error": kind, "reason": reason}``."""
    return JSON.encode({"error": kind, "reason": reason})
