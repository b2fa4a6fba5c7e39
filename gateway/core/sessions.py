"""What a lookup yields and what a decision says: ``Session``, ``Reason`` and ``Verdict``."""

from __future__ import annotations

import datetime as dt
import enum
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

if TYPE_CHECKING:
    from gateway.core.fields import Fields

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
    rate_limited = "rate_limited"  # the address's failure budget gave this lookup no turn in time (not judged)
    # API keys (@better-auth/api-key): the plugin's own refusals of a key found.
    key_disabled = "key_disabled"
    key_usage_exceeded = "key_usage_exceeded"  # remaining spent, no refill due
    key_rate_limited = "key_rate_limited"  # the window its recorded uses opened is spent


class Session(msgspec.Struct, frozen=True, gc=False):
    """A valid session as Better Auth reports it, minus the token.

    ``session`` and ``user`` use Better Auth's field names (whatever the columns are called) and
    JSON-ready values (dates as ``toISOString()`` strings), so they serialise straight into
    Better Auth's get-session shape. The token is deliberately absent: cached values never
    hold one.
    """

    expires_at: float  # the session's expiresAt, seconds since the epoch
    banned_until: float  # 0: not banned; inf: banned for good; else the ban's end (epoch seconds)
    session: JSONObject  # the fields Better Auth returns, and no other
    user: JSONObject  # the same
    # The user's role (admin plugin), for identity headers and policy: read whether or not
    # Better Auth returns it, so it lives beside the answer's fields, not among them.
    role: str | None = None
    # The organization plugin (GATEWAY_ORGANIZATIONS=on): the session's activeOrganizationId and
    # the member's role in it (Better Auth's ``member.role``, comma-separated when several); both
    # ``None`` without an active organization, or where the feature is off. Optional, so a cached
    # value written before they existed still decodes (``redis.values``).
    org_id: str | None = None
    org_role: str | None = None

    @classmethod
    def from_better_auth(cls, session: JSONObject, user: JSONObject, fields: Fields | None = None) -> Session:
        """A session from Better Auth's JSON shape (its cookie cache, its secondary storage).

        ``fields``: keep only the fields Better Auth returns (the bans and the role are read first).

        Raises:
            ValueError: ``expiresAt`` (or a ban's ``banExpires``) is not an ISO date.
        """
        banned_until = 0.0
        if user.get("banned") is True:
            ban_expires = user.get("banExpires")
            banned_until = math.inf if ban_expires is None else iso_epoch(ban_expires)
        role = user.get("role")
        return cls(
            expires_at=iso_epoch(session.get("expiresAt")),
            banned_until=banned_until,
            session=fields.session_of(session) if fields else {k: v for k, v in session.items() if k != "token"},
            user=fields.user_of(user) if fields else user,
            role=role if isinstance(role, str) else None,
        )

    @property
    def user_id(self) -> str:
        """The Better Auth user id."""
        return str(self.user["id"])

    @property
    def session_id(self) -> str:
        """The session's primary key (never its token)."""
        return str(self.session["id"])


def iso_epoch(value: object) -> float:
    """Seconds since the epoch of one of Better Auth's ISO dates; ``ValueError`` if it is none."""
    if not isinstance(value, str):
        msg = f"not an ISO date: {value!r}"
        raise ValueError(msg)  # noqa: TRY004  (bad data, reported as such)
    return dt.datetime.fromisoformat(value).timestamp()


class Verdict(NamedTuple):
    """The outcome of one decision: a reason and, when allowed, the session.

    ``token`` and ``digest``: the session token the credential's check proved and its SHA-256,
    when the decision checked it (a cached credential needs no check: both ``None``), so that
    nothing after the decision checks it again. The token never leaves the process: it is kept
    out of ``repr``, and only Better Auth's get-session answer (to the token's own holder) holds it.
    """

    reason: Reason
    session: Session | None = None
    token: str | None = None
    digest: str | None = None
    # A rate-limited API key's wait until its window closes, in ms (the plugin's ``details.tryAgainIn``).
    try_again_in_ms: int | None = None

    def __repr__(self) -> str:
        token = "None" if self.token is None else "<hidden>"
        return (
            f"Verdict(reason={self.reason!r}, session={self.session!r}, token={token}, digest={self.digest!r}, "
            f"try_again_in_ms={self.try_again_in_ms!r})"
        )

    @property
    def allowed(self) -> bool:
        """Whether the request carries a valid session."""
        return self.reason is Reason.ok
