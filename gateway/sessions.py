"""What a lookup yields and what a decision says: ``Session``, ``Reason`` and ``Verdict``."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import msgspec

JSONObject = dict[str, Any]


class Reason(enum.StrEnum):
    """Why a request was allowed or refused; a bounded set that feeds responses, logs and metrics."""

    ok = "ok"
    no_credentials = "no_credentials"
    malformed = "malformed"  # cannot be a Better Auth token: length, alphabet, encoding
    bad_signature = "bad_signature"
    unsigned_token = "unsigned_token"  # noqa: S105 — a raw bearer token while signatures are required
    unknown_session = "unknown_session"  # no such session, or its user is gone
    expired = "expired"
    banned = "banned"
    invalid_jwt = "invalid_jwt"  # a JWT of the JWT plugin with the wrong audience, issuer or claims
    backend_unavailable = "backend_unavailable"


class Session(msgspec.Struct, frozen=True, gc=False):
    """A valid session as Better Auth reports it, minus the token.

    ``session`` and ``user`` use Better Auth's field names (whatever the columns are called) and
    JSON-ready values (dates as ``toISOString()`` strings), so they serialise straight into
    Better Auth's get-session shape. The token is deliberately absent: cached values never
    hold one.
    """

    expires_at: float  # the session's expiresAt, seconds since the epoch
    banned_until: float  # 0: not banned; inf: banned for good; else the ban's end (epoch seconds)
    session: JSONObject
    user: JSONObject

    @property
    def user_id(self) -> str:
        """The Better Auth user id."""
        return str(self.user["id"])

    @property
    def session_id(self) -> str:
        """The session's primary key (never its token)."""
        return str(self.session["id"])


class Verdict(NamedTuple):
    """The outcome of one decision: a reason and, when allowed, the session."""

    reason: Reason
    session: Session | None = None

    @property
    def allowed(self) -> bool:
        """Whether the request carries a valid session."""
        return self.reason is Reason.ok
