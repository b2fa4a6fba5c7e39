"""Better Auth's get-session for an API key (the plugin's hook): its mock session, or its refusal.

For a valid key Better Auth answers the session its hook made up: the key's ``id``, the key
itself as ``token``, the request's ``user-agent`` and client IP (``getIP``: the one address of
``X-Forwarded-For``), now as ``createdAt``/``updatedAt``. For a refused key it answers the
plugin's error (401, 403 or 429 with ``{"code", "message"}``, and the rate limit's
``details.tryAgainIn``), never ``null``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import msgspec

from gateway.core.sessions import Reason, Session
from gateway.credentials.api_keys import BETTER_AUTH_REFUSALS, SHORT_KEY_REFUSAL, UNREADABLE_KEY
from gateway.http import responses
from gateway.http.pipeline import Answer

if TYPE_CHECKING:
    from gateway.core.sessions import Verdict
    from gateway.credentials.tokens import Credential, Headers

_HEADERS = [responses.JSON_TYPE, responses.NO_STORE, ("pragma", "no-cache")]
_ERROR = msgspec.json.Encoder()


def session_answer(verdict: Verdict, credential: Credential, headers: Headers, min_length: int) -> Answer:
    """Better Auth's get-session answer for an API key credential's verdict (not an outage: the caller's)."""
    reason = verdict.reason
    if verdict.session is not None and verdict.token is not None:
        found = verdict.session
        mock = found.session | {"userAgent": headers.get("user-agent"), "ipAddress": client_ip(headers)}
        body = responses.better_auth_session(
            Session(found.expires_at, found.banned_until, mock, found.user), verdict.token
        )
        return Answer(200, _HEADERS, reason, body)
    short = reason is Reason.malformed and len(credential.value) < min_length and credential.key != UNREADABLE_KEY
    status, code, message = (
        SHORT_KEY_REFUSAL if short else BETTER_AUTH_REFUSALS.get(reason, BETTER_AUTH_REFUSALS[Reason.malformed])
    )
    refusal: dict[str, object] = {"code": code, "message": message}
    if verdict.try_again_in_ms is not None:  # the plugin's APIError for a spent rate-limit window says when
        refusal["details"] = {"tryAgainIn": verdict.try_again_in_ms}
    return Answer(status, _HEADERS, reason, _ERROR.encode(refusal))


def client_ip(headers: Headers) -> str | None:
    """Better Auth's ``getIP`` (no trusted proxies): the one valid address of ``X-Forwarded-For``, else ``None``."""
    forwarded = headers.get_all("x-forwarded-for")
    if len(forwarded) != 1:
        return None
    hops = [hop.strip() for hop in forwarded[0].split(",") if hop.strip()]
    if len(hops) != 1:
        return None
    try:
        return str(ipaddress.ip_address(hops[0]))
    except ValueError:
        return None
