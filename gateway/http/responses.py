"""What the HTTP adapter sends: identity headers, deny headers and JSON bodies, built once.

Constant header lists are made at import or construction time; the allow headers of a session
are made once per cache entry, so a cache hit sends a list that already exists.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import msgspec

from gateway.core.column_values import RawJSON, encode_hook
from gateway.core.fields import IDENTITY_FIELDS, ORGANIZATION_FIELDS
from gateway.core.sessions import Reason, Session

JSON = msgspec.json.Encoder(enc_hook=encode_hook)  # a RawJSON (too deep to decode) goes out verbatim
# Stands for a RawJSON in the standard library's output until the text replaces it: random, so
# no stored string can hold it.
_PLACEHOLDER = "raw-json-" + secrets.token_hex(16)

# Field -> header; every one is always sent on a 200 (empty when unknown) so that a proxy which
# only overrides headers present in the auth response still clobbers a client's forged value.
DEFAULT_IDENTITY = {field: "x-auth-request-" + field.replace("_", "-") for field in IDENTITY_FIELDS}
REMOTE_ALIASES = {"user": "remote-user", "email": "remote-email", "name": "remote-name", "groups": "remote-groups"}
JSON_TYPE = ("content-type", "application/json")
NO_STORE = ("cache-control", "no-store")
# A header value may not carry control characters (CR/LF would split the response), and
# granian sends values as Latin-1: anything else is percent-encoded, as oauth2-proxy does.
# One class (a control character, DEL, or past Latin-1), in runs; the group makes split keep them.
_UNSAFE = re.compile(r"([^\x20-\x7e\x80-\xff]+)")
# A user writes their own name and fields, megabytes if they like, and their headers are made on
# the event loop, on a session's first hit and on every request of the full path. Escaping took a
# Python call a character: a user's 10 MB name held every user's requests for 10 s, and 4,096
# emoji in two headers, asked 200 times, 2.8 s (red team). A value is escaped a run of unsafe
# characters at a time (one call each); a value longer than MAX_HEADER_VALUE, or with more than
# MAX_ESCAPED_RUNS runs, is sent empty, as a null one is. No name comes near either, and nginx by
# default fails an auth answer whose headers outgrow one 4 or 8 KiB buffer.
MAX_HEADER_VALUE = 4096
MAX_ESCAPED_RUNS = 256


def header_value(value: Any) -> str:
    """Render a field for a response header; ``None``, or past ``MAX_HEADER_VALUE`` or ``MAX_ESCAPED_RUNS``: empty."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if len(text) > MAX_HEADER_VALUE:
        return ""
    # Printable ASCII (the usual value) is safe as it is: two C calls, a fifth of a regex scan.
    if (text.isascii() and text.isprintable()) or _UNSAFE.search(text) is None:
        return text
    parts = _UNSAFE.split(text, MAX_ESCAPED_RUNS + 1)  # one C pass, stopped one run past the bound
    if len(parts) > 2 * MAX_ESCAPED_RUNS + 1:
        return ""
    # Each run's UTF-8 bytes as %XX (surrogatepass: a lone surrogate, "\ud800" in JSON, is escaped like the rest).
    parts[1::2] = ["%" + run.encode("utf-8", "surrogatepass").hex("%").upper() for run in parts[1::2]]
    return "".join(parts)


class Identity:
    """Renders a session as the identity headers of a 200 (names configurable, aliases optional)."""

    def __init__(
        self,
        renamed: dict[str, str] | None = None,
        *,
        remote: bool = False,
        organizations: bool = False,
        fields: dict[str, str] | None = None,
    ) -> None:
        names = DEFAULT_IDENTITY | {k: v.lower() for k, v in (renamed or {}).items()}
        pairs = list(names.items())
        if not organizations:  # organizations: their headers only where GATEWAY_ORGANIZATIONS=on
            pairs = [(field, header) for field, header in pairs if field not in ORGANIZATION_FIELDS]
        if remote:
            pairs += list(REMOTE_ALIASES.items())
        self.names: tuple[tuple[str, str], ...] = tuple(pairs)
        # GATEWAY_FIELD_HEADERS ("user.tenantId" -> "x-tenant-id"; checked at startup): (in user?, field, header).
        self.fields = tuple(
            (field.startswith("user."), field.partition(".")[2], header.lower())
            for field, header in (fields or {}).items()
        )
        self.anonymous = [(header, "") for _, header in self.names] + [(header, "") for _, _, header in self.fields]

    def headers(self, session: Session) -> list[tuple[str, str]]:
        """Every identity header for ``session``."""
        user = session.user
        fields = {
            "user": user.get("id"),
            "email": user.get("email"),
            "name": user.get("name"),
            "session_id": session.session.get("id"),
            "role": session.role,
            "groups": session.role,  # Better Auth's admin plugin keeps roles comma-separated
            # organizations: the active one, and the member's role(s) in it; no member of it: no
            # organization at all (red team: a removed member's header still named it, a tenant to serve)
            "org_id": session.org_id if session.org_role is not None else None,
            "org_role": session.org_role,
        }
        headers = [(header, header_value(fields[field])) for field, header in self.names]
        for in_user, field, header in self.fields:  # always sent, empty when null: a forged value is clobbered
            headers.append((header, header_value(_scalar((user if in_user else session.session).get(field)))))
        return headers


def _scalar(value: Any) -> Any:
    """A field as a header shows it: a JSON object or array (a ``json`` field) as its JSON text."""
    if isinstance(value, RawJSON):
        return value.text
    if isinstance(value, dict | list):
        return _encode(value).decode()
    return value


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
        self.forbidden = [NO_STORE, ("x-auth-reason", "forbidden")]
        self.json_unavailable = [JSON_TYPE, *self.unavailable]
        self.json_unauthenticated = {r: [JSON_TYPE, *h] for r, h in self.unauthenticated.items()}


def identity(session: Session, *, organizations: bool = False) -> bytes:
    """The body of ``POST /v1/validate`` on success: user and session, without the token.

    A JWT of the JWT plugin has no session behind it: ``"session": null``. ``organizations``
    (GATEWAY_ORGANIZATIONS=on): also ``"organization": {"id": ..., "role": ...}``, the active
    organization and the member's role in it (comma-separated when several; ``null`` when the
    user is no member of it), or ``null`` without an active organization.
    """
    body = {"user": session.user, "session": session.session or None}
    if organizations:
        body["organization"] = None if session.org_id is None else {"id": session.org_id, "role": session.org_role}
    return _encode(body)


def better_auth_session(session: Session, token: str) -> bytes:
    """The body Better Auth's ``GET /api/auth/get-session`` returns for a valid session."""
    return _encode({"session": {**session.session, "token": token}, "user": session.user})


def _encode(body: dict[str, Any] | list[Any]) -> bytes:
    """JSON for an answer; a lone surrogate in some string is escaped (``\ud800``), as ``JSON.stringify`` does.

    Strings from JSON (a cookie cache, secondary storage, a JWT) may hold one, which UTF-8 cannot
    encode: msgspec refuses them, the standard library escapes them.
    """
    try:
        return JSON.encode(body)
    except UnicodeEncodeError:
        raws: list[str] = []

        def keep(value: object) -> str:
            if isinstance(value, RawJSON):
                raws.append(value.text)
                return _PLACEHOLDER
            msg = f"cannot encode {type(value).__name__}"
            raise TypeError(msg)

        text = json.dumps(body, separators=(",", ":"), default=keep)
        for raw in raws:  # in the order json.dumps met them
            text = text.replace(f'"{_PLACEHOLDER}"', raw, 1)
        return text.encode()


def error(kind: str, reason: str) -> bytes:
    """A JSON error body: ``{"error": kind, "reason": reason}``."""
    return JSON.encode({"error": kind, "reason": reason})
