"""Better Auth's ``secondaryStorage`` in Redis as the source of truth (``docs/better-auth.md`` §6).

Where Better Auth keeps sessions only in Redis, a session is the key ``<prefix><token>`` (with
``@better-auth/redis-storage`` the prefix is ``better-auth:``; a hand-written storage often has
none) holding ``{"session": {...}, "user": {...}}``. Better Auth 1.7.16+ also treats a session
as revoked when ``revoked-sessions-before-<userId>`` holds a time after the session's
``createdAt`` (bulk revocations: ban, revoke-sessions, password change). The gateway reads both,
batched (one ``MGET`` for the tokens, one for their users), and never writes.

Revocations reach the LRU through Redis keyspace notifications (``notify-keyspace-events``
with ``K``, ``g``, ``$`` and ``x``, or ``KA``): a session key deleted, expired or rewritten, or a
``revoked-sessions-before-`` key set, evicts at once. Where they are off the LRU keeps sessions
for one second at most, and ``/readyz`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from gateway.core.column_values import decode_json, object_members
from gateway.core.errors import StoreUnavailable
from gateway.core.sessions import Session, iso_epoch
from gateway.redis.tier import FAILURES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

    from gateway.core.fields import Fields
    from gateway.lookup.tiers import Tiers

log = logging.getLogger("gateway.redis.secondary_storage")

REVOKED_BEFORE = "revoked-sessions-before-"
ACTIVE_SESSIONS = "active-sessions-"
# The keyspace events that end or change what a session key says.
_EVICTING = frozenset({"del", "expired", "evicted", "set", "rename_from", "unlink"})


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
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self.client.mget([self.prefix + t for t in tokens])
                found = {t: parsed for t, v in zip(tokens, values, strict=True) if (parsed := _parse(v)) is not None}
                users = sorted({str(p["user"].get("id")) for p in found.values()})
                revoked = await self.client.mget([self.prefix + REVOKED_BEFORE + u for u in users]) if users else []
        except FAILURES as exc:
            raise StoreUnavailable(f"Better Auth's secondary storage: {type(exc).__name__}: {exc}") from exc
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
        """Raise ``StoreUnavailable`` if Redis does not answer within the budget."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.client.ping()
        except FAILURES as exc:
            raise StoreUnavailable(f"Better Auth's secondary storage: {type(exc).__name__}: {exc}") from exc

    async def notifications_on(self) -> bool:
        """Whether Redis publishes the keyspace events revocations are heard by."""
        try:
            async with asyncio.timeout(self._timeout_s):
                config = await self.client.config_get("notify-keyspace-events")
        except FAILURES as exc:
            log.warning("cannot read notify-keyspace-events (%s): assuming keyspace notifications are off", exc)
            return False
        kinds = set(_text(config.get("notify-keyspace-events") or ""))
        return "K" in kinds and ("A" in kinds or {"g", "$", "x"} <= kinds)

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()


class KeyspaceListener:
    """Evicts from the LRU what Redis says changed: Better Auth's revocations in secondary storage."""

    def __init__(self, storage: SecondaryStorage, tiers: Tiers, backoff_s: float) -> None:
        self._storage = storage
        self._tiers = tiers
        db = storage.client.connection_pool.connection_kwargs.get("db", 0)
        self._pattern = f"__keyspace@{db}__:{_glob_escape(storage.prefix)}*"
        self._channel_head = len(f"__keyspace@{db}__:")
        self._backoff_s = backoff_s
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        """Listen in the background until ``close``."""
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except FAILURES as exc:
                log.warning("keyspace notifications lost (%s): retrying in %.1fs", exc, self._backoff_s)
            self.connected = False
            await asyncio.sleep(self._backoff_s)

    async def _listen(self) -> None:
        pubsub = self._storage.client.pubsub()
        try:
            await pubsub.psubscribe(self._pattern)
            self.connected = True
            await self._tiers.flush()  # what changed while nobody listened is unknown
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self._handle(_text(message["channel"]), _text(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _handle(self, channel: str, event: str) -> None:
        if event not in _EVICTING:
            return
        key = channel[self._channel_head + len(self._storage.prefix) :]
        if key.startswith(REVOKED_BEFORE):
            self._tiers.invalidate_user(key[len(REVOKED_BEFORE) :])
        elif not key.startswith(ACTIVE_SESSIONS):
            self._tiers.invalidate_token(hashlib.sha256(key.encode()).hexdigest())


def _parse(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    except RecursionError:  # a field the user wrote, nested past the parser's limit: JSON.parse reads it
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


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
