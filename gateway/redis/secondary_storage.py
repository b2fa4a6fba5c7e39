"""Better Auth's ``secondaryStorage`` in Redis as the source of truth (``docs/better-auth.md`` §6).

Where Better Auth keeps sessions only in Redis, a session is the key ``<prefix><token>`` (with
``@better-auth/redis-storage`` the prefix is ``better-auth:``; a hand-written storage often has
none) holding ``{"session": {...}, "user": {...}}``. Better Auth 1.7.16+ also treats a session
as revoked when ``revoked-sessions-before-<userId>`` holds a time after the session's
``createdAt`` (bulk revocations: ban, revoke-sessions, password change). The gateway reads both,
batched (one ``MGET`` for the tokens, one for their users), and never writes.

Revocations reach the LRU through Redis keyspace notifications (``keyspace.KeyspaceListener``).
Where they are off the LRU keeps sessions for one second at most, and ``/readyz`` says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from gateway.core.column_values import decode_json, object_members, too_deep
from gateway.core.errors import StoreUnavailable
from gateway.core.sessions import Session, iso_epoch
from gateway.redis.client import answering

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

    from gateway.core.fields import Fields

log = logging.getLogger("gateway.redis.secondary_storage")

REVOKED_BEFORE = "revoked-sessions-before-"
ACTIVE_SESSIONS = "active-sessions-"
_SOURCE = "Better Auth's secondary storage"


class SecondaryStorage:
    """Sessions from Better Auth's Redis secondary storage (a ``SessionSource``)."""

    def __init__(self, client: Redis, prefix: str, timeout_s: float, fields: Fields | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self._timeout_s = timeout_s
        # What Better Auth returns: a stored value's other keys (written by another app or an
        # older configuration) are never answered.
        self._fields = fields

    async def fetch_many(self, tokens: Sequence[str]) -> dict[str, Session]:
        """The live sessions among ``tokens``, as Better Auth's ``findSession`` reads them."""
        async with answering(self._timeout_s, StoreUnavailable, _SOURCE):
            values = await self.client.mget([self.prefix + t for t in tokens])
            found = {t: parsed for t, v in zip(tokens, values, strict=True) if (parsed := _parse(v)) is not None}
            users = sorted({str(p["user"].get("id")) for p in found.values()})
            revoked = await self.client.mget([self.prefix + REVOKED_BEFORE + u for u in users]) if users else []
        before = {u: float(r) for u, r in zip(users, revoked, strict=True) if r is not None and _is_number(r)}
        sessions = {}
        for token, value in found.items():
            session, user = value["session"], value["user"]
            cutoff = before.get(str(user.get("id")))
            if cutoff is not None and _created_ms(session) < cutoff:
                continue  # revoked in bulk after it was created
            with contextlib.suppress(ValueError):
                sessions[token] = Session.from_better_auth(session, user, self._fields)
        return sessions

    async def ping(self) -> None:
        """Return once Redis answers ``PING``.

        Raises:
            StoreUnavailable: Redis did not answer within the budget (the cause chained).
        """
        async with answering(self._timeout_s, StoreUnavailable, _SOURCE):
            await self.client.ping()

    async def notifications_on(self) -> bool:
        """Whether Redis publishes the keyspace events revocations are heard by."""
        try:
            async with answering(self._timeout_s, StoreUnavailable, _SOURCE):
                config = await self.client.config_get("notify-keyspace-events")
        except StoreUnavailable as exc:
            log.warning("cannot read notify-keyspace-events (%s): assuming keyspace notifications are off", exc)
            return False
        kinds = set(text(config.get("notify-keyspace-events") or ""))
        return "K" in kinds and ("A" in kinds or {"g", "$", "x"} <= kinds)

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()


def _parse(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    except RecursionError:  # a field the user wrote, nested past the parser's limit: JSON.parse reads it
        value = _parse_deep(raw)
    else:
        if isinstance(raw, str | bytes) and too_deep(value, raw):
            # Decoded here, on a short stack, it could still be too deep to render or compare
            # further up one (``column_values.MAX_DEPTH``): read field by field, a deep one kept as text.
            value = _parse_deep(raw)
    if not isinstance(value, dict) or not isinstance(value.get("session"), dict):
        return None
    return value if isinstance(value.get("user"), dict) else None


def _parse_deep(raw: object) -> dict[str, Any] | None:
    """A value too deep for ``json.loads``, read field by field (a field too deep is kept as its text)."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        return None
    outer = object_members(text)
    if outer is None or "session" not in outer or "user" not in outer:
        return None
    value = {}
    for part in ("session", "user"):
        members = object_members(outer[part])
        if members is None:
            return None
        value[part] = {name: decode_json(member) for name, member in members.items()}
    return value


def _created_ms(session: dict[str, Any]) -> float:
    """``createdAt`` in milliseconds; NaN when unreadable, which no cutoff is after (as in JavaScript)."""
    try:
        return iso_epoch(session.get("createdAt")) * 1000
    except ValueError:
        return math.nan


def _is_number(raw: object) -> bool:
    try:
        float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def text(value: object) -> str:
    """A value Redis returned, as text (bytes decoded, anything undecodable replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
