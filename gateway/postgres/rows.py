"""Rows to Better Auth's JSON: a lookup's row becomes a ``Session`` with the values Better Auth shows.

Pure functions, no I/O: the dates as JavaScript's ``toISOString()`` writes them, timestamps as
seconds since 1970 for the expiry checks.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.core import column_values
from gateway.core.column_values import FarTime
from gateway.core.sessions import Session
from gateway.postgres.organizations import ORG_ID, ORG_ROLE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.postgres.schema import Query

log = logging.getLogger("gateway.postgres.rows")
_UTC = dt.UTC


def row_session(query: Query, row: Sequence[Any], offset: int) -> Session | None:
    """``to_session``, where a row that cannot be read is a miss for its token alone, never an error for the batch."""
    try:
        return to_session(query, row, offset)
    except (TypeError, ValueError, OverflowError) as exc:
        log.warning("a session row could not be read, treated as no session: %s", type(exc).__name__)
        return None


def to_session(query: Query, row: Sequence[Any], offset: int = 0) -> Session:
    """Turn a row of ``query`` into a ``Session`` with Better Auth's field names and JSON values.

    ``offset`` skips leading columns (the batched query selects the token first). Columns read
    only to decide (a role or ban Better Auth does not return) never reach the answer's fields.
    """
    # Every Postgres hit comes through here (its cost showed in the profile of a caches-off hit:
    # benchmarks/results/): values shown as they are skip the call, the positions are read once.
    raw = row[offset:]  # a tuple (an asyncpg Record slices into one), not a list copied first
    n, at = len(query.session_fields), query.positions
    values = [v if type(v) in _AS_IS else json_value(v) for v in raw[: n + len(query.user_fields)]]
    role = raw[at["role"]] if "role" in at else None
    banned = raw[at["banned"]] if "banned" in at else None
    ban_expires = raw[at["banExpires"]] if "banExpires" in at else None
    return Session(
        expires_at=unix_seconds(raw[at["expiresAt"]]),
        banned_until=0.0 if banned is not True else math.inf if ban_expires is None else unix_seconds(ban_expires),
        session=dict(zip(query.session_fields, values[:n], strict=True)),
        user=dict(zip(query.user_fields, values[n:], strict=True)),
        role=role if isinstance(role, str) else None,
        # organizations (GATEWAY_ORGANIZATIONS=on): selected as text, NULL without an active organization or member
        org_id=raw[at[ORG_ID]] if ORG_ID in at else None,
        org_role=raw[at[ORG_ROLE]] if ORG_ROLE in at else None,
    )


def unix_seconds(value: Any) -> float:
    """Seconds since 1970 (Unix time) of a timestamp column (naive values are UTC, as Better Auth writes them)."""
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_UTC)).timestamp()
    if isinstance(value, int | float):  # a bigint of milliseconds (custom schemas)
        return value / 1000
    if isinstance(value, FarTime):  # after year 9999 (or before year 1)
        return value.epoch_s
    msg = f"not a timestamp: {value!r}"
    raise TypeError(msg)


def iso_string(value: dt.datetime) -> str:
    """JavaScript's ``toISOString()``: UTC, milliseconds (truncated), ``Z``; naive values are UTC.

    msgspec writes RFC 3339 six times faster than ``isoformat``: the seconds, then six digits of
    fraction when there is one, then ``Z`` for UTC.
    """
    zone = value.tzinfo
    if zone is not _UTC and zone is not None:
        value = value.astimezone(_UTC)
    text: str = msgspec.to_builtins(value)
    return text[:19] + (text[19:23] if value.microsecond else ".000") + "Z"


# Column values Better Auth's JSON shows as they are; checked by exact type first (the hot case).
# A RawJSON (a document too deep to decode) is answered verbatim and never cached in Redis.
_AS_IS = frozenset({str, bool, int, float, dict, list, type(None), column_values.RawJSON})


def json_value(value: Any) -> Any:
    """Render a column value as Better Auth's JSON does (dates as JavaScript ``toISOString()``)."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dt.datetime or isinstance(value, dt.datetime):  # the exact type first: the hot case
        return iso_string(value)
    if isinstance(value, dt.date):  # node-postgres reads a date as a Date at midnight: see decode_date
        return value.isoformat() + "T00:00:00.000Z"
    if isinstance(value, FarTime):
        return value.iso()
    if isinstance(value, str | bool | int | float | dict | list):  # subclasses
        return value
    return str(value)  # uuid, numeric, inet: their text form
