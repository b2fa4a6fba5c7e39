"""``GATEWAY_FIELD_HEADERS``: any returned user or session field as a header of ``/validate``'s 200.

``user.tenantId=x-tenant-id,session.ipAddress=x-client-ip``: each field is one Better Auth
returns (``returned_fields``: core, plugins, ``additionalFields``), never the session token;
each name a valid header name, lower-cased, that no other header of the gateway's answers uses
(a proxy copies them upstream: one name, one meaning). Checked at startup, every problem at once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.core.fields import IDENTITY_FIELDS

if TYPE_CHECKING:
    from gateway.config.settings import Settings

VARIABLE = "GATEWAY_FIELD_HEADERS"
_NAME = re.compile(r"[A-Za-z0-9\-_]{1,64}")
# The names the gateway's own answers use, and those a proxy or the upstream gives a meaning of
# their own (hop-by-hop, framing, caching, cookies, credentials): a field may not take one.
RESERVED = frozenset(
    {
        "authorization",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "date",
        "host",
        "keep-alive",
        "location",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "retry-after",
        "server",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "vary",
        "www-authenticate",
        "x-auth-browser-redirect",
        "x-auth-error-status",
        "x-auth-reason",
        "x-session-token",
        "remote-user",
        "remote-email",
        "remote-name",
        "remote-groups",
    }
)


def identity_names(s: Settings) -> set[str]:
    """The identity headers' names as configured (``GATEWAY_IDENTITY_HEADERS`` renames them)."""
    default = {field: "x-auth-request-" + field.replace("_", "-") for field in IDENTITY_FIELDS}
    return {name.lower() for name in (default | s.identity_headers).values()}


def problems(s: Settings) -> list[str]:
    """Every problem of ``GATEWAY_FIELD_HEADERS``, each naming the variable."""
    found: list[str] = []
    taken = RESERVED | identity_names(s)
    seen: set[str] = set()
    for field, name in s.field_headers.items():
        scope, _, key = field.partition(".")
        known = s.returned_fields.user if scope == "user" else s.returned_fields.session if scope == "session" else ()
        if key not in known or field == "session.token":
            found.append(
                f"{VARIABLE}: {field!r} is not a returned field: 'user.<field>' or 'session.<field>', "
                "one Better Auth returns (core, GATEWAY_PLUGINS, GATEWAY_*_ADDITIONAL_FIELDS), never the token"
            )
        lower = name.lower()
        if not _NAME.fullmatch(name):
            found.append(f"{VARIABLE}: {name!r} is not a valid header name")
        elif lower in taken:
            found.append(f"{VARIABLE}: {name!r} is reserved (the gateway's own, or a proxy's)")
        elif lower in seen:
            found.append(f"{VARIABLE}: {name!r} is given to two fields")
        seen.add(lower)
    return found
