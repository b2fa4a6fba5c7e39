"""Decoding a user's own column values without ever failing a lookup: JSON and dates, as Better Auth reads them.

A user writes their own additional fields (Better Auth's update-user), so whatever Postgres
accepts, a row may hold: a ``json`` value nested past any decoder's recursion limit, a number
past 2**64 (``1e29`` comes back from ``jsonb`` as thirty digits), a ``date`` field in year
10000. Better Auth answers all of them (``JSON.parse``, JavaScript's ``Date``). asyncpg calls a
column's decoder inside the fetch: one that raises fails the whole result, every session
batched with that user's. So these decoders never raise; they give what JavaScript would:

- JSON is read with msgspec (the fast, common case); a number JavaScript would round (beyond
  2**53) becomes a float, as ``JSON.parse`` makes it; a document nested deeper than
  ``MAX_DEPTH`` is kept as its text (``RawJSON``), which answers go out with verbatim and Redis
  refuses to cache (msgpack cannot encode it). Not "too deep for the decoder" alone: every
  recursive step after it (msgspec's encoders, a dict's ``==``) has Python's recursion limit
  less the stack in use as its own depth limit, and most run deeper than the decoder did, so a
  document nested just under the decoder's limit decoded, then raised ``RecursionError`` out of
  the answer's rendering (a 500 for the user's every request).
- A timestamp Python's ``datetime`` cannot hold (after 9999, before year 1) becomes a
  ``FarTime``, which renders as ``toISOString()`` does (``+010000-01-01T00:00:00.000Z``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import msgspec

_JS_SAFE = 2**53  # beyond this, JavaScript's numbers are no longer exact integers
# A run of 16 digits may be an integer past 2**53 (or a long fraction: the careful path is right for both).
_LONG_DIGITS = re.compile(r"[0-9]{16}")
# A \uXXXX escape of a surrogate: msgspec refuses an unpaired one, json.loads keeps it in the str.
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)
_UTC = dt.UTC
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=_UTC)  # asyncpg's "tuple" format counts from here
_PG_EPOCH_S = 946_684_800
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_INFINITY = (2**63 - 1, -(2**63))  # timestamp 'infinity' and '-infinity'
_DATE_INFINITY = (2**31 - 1, -(2**31))
_FOUR_DIGITS = 9999  # toISOString() writes years 0-9999 as four digits, others as ±YYYYYY
_JS_MAX_MS = 8.64e15  # JavaScript's Date range: ±100,000,000 days around the epoch
MAX_DEPTH = 128  # nesting decoded (serde_json's default limit); far below any stack's, wherever it is used


class RawJSON:
    """A JSON document kept as text: too deep to decode, answered verbatim (never cached in Redis)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RawJSON({len(self.text)} characters)"


class FarTime:
    """A timestamp outside Python's ``datetime`` (years 1-9999): seconds since the Unix epoch."""

    __slots__ = ("epoch_s",)

    def __init__(self, epoch_s: float) -> None:
        self.epoch_s = epoch_s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FarTime) and other.epoch_s == self.epoch_s

    def __hash__(self) -> int:
        return hash(self.epoch_s)

    def iso(self) -> str | None:
        """``Date.prototype.toJSON``: ``toISOString()``, or ``null`` outside JavaScript's range."""
        return js_iso(self.epoch_s * 1000)


def encode_hook(value: object) -> object:
    """The JSON answers' ``enc_hook``: a ``RawJSON`` goes out as the text it holds."""
    if isinstance(value, RawJSON):
        return msgspec.Raw(value.text.encode())
    msg = f"cannot encode {type(value).__name__}"
    raise NotImplementedError(msg)


def decode_json(text: str, _decode: Any = msgspec.json.decode, _search: Any = _LONG_DIGITS.search) -> Any:
    """A JSON document as ``JSON.parse`` reads it; never raises (see the module docstring).

    The hot path (a Postgres hit): one msgspec decode and one scan for long digit runs.
    """
    try:
        value = _decode(text)
    except (RecursionError, msgspec.DecodeError):
        return _careful(text)
    if _search(text) is not None:
        return _careful(text)
    return RawJSON(text) if len(text) > 2 * MAX_DEPTH and too_deep(value, text) else value


def too_deep(value: Any, text: str | bytes) -> bool:
    """Whether ``value`` (decoded from ``text``) nests deeper than ``MAX_DEPTH``; iterative, no recursion.

    ``text`` first: a document with no more brackets than that cannot, and is not walked.
    """
    brackets = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
    if brackets <= MAX_DEPTH:
        return False
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, dict | list)]
        if not level:
            return False
    return True


def _careful(text: str) -> Any:
    r"""The slow path: numbers as JavaScript's doubles, and the text itself when nothing can read it.

    ``json.loads`` reads an unpaired surrogate escape (``"\ud800"``, which ``json`` keeps
    verbatim and ``JSON.parse`` accepts) into a str no encoder can write (UTF-8 has no form for
    it): such a document is kept as its text too, as Better Auth answers it.
    """
    try:
        value = json.loads(text, parse_int=_js_int)
    except (RecursionError, ValueError):
        return RawJSON(text)
    if too_deep(value, text):
        return RawJSON(text)
    if _LONE_SURROGATE.search(text) is not None:
        try:
            msgspec.json.encode(value)
        except (RecursionError, UnicodeEncodeError, msgspec.EncodeError):
            return RawJSON(text)
    return value


def _js_int(text: str) -> int | float:
    if len(text) <= 15:  # noqa: PLR2004  (fewer than 16 digits: below 2**53, exact either way)
        return int(text)
    value = float(text)  # never fails on digits (inf past 1e308, which JSON.stringify writes as null)
    return int(value) if abs(value) <= _JS_SAFE else value


def decode_timestamp(value: tuple[int], _epoch: Any = _PG_EPOCH, _delta: Any = dt.timedelta) -> dt.datetime | FarTime:
    """A ``timestamp[tz]`` in asyncpg's ``tuple`` format (microseconds since 2000) as a UTC datetime.

    Every timestamp of every Postgres hit comes through here: the common case is one addition.
    """
    try:
        moment: dt.datetime = _epoch + _delta(0, 0, value[0])
    except OverflowError:
        return _far_timestamp(value[0])
    return moment


def _far_timestamp(microseconds: int) -> dt.datetime | FarTime:
    if microseconds in _PG_INFINITY:  # as asyncpg's own codec: the ends of datetime's range
        return dt.datetime.max.replace(tzinfo=_UTC) if microseconds > 0 else dt.datetime.min.replace(tzinfo=_UTC)
    return FarTime(_PG_EPOCH_S + microseconds / 1_000_000)


def encode_timestamp(value: dt.datetime) -> tuple[int]:
    """The inverse of ``decode_timestamp`` (the gateway sends no timestamps; asyncpg wants one)."""
    aware = value if value.tzinfo else value.replace(tzinfo=_UTC)
    return (round((aware - _PG_EPOCH).total_seconds() * 1_000_000),)


def decode_date(value: tuple[int]) -> dt.date | str | None:
    """A ``date`` in asyncpg's ``tuple`` format (days since 2000-01-01); a far one as ``toISOString()`` writes it.

    node-postgres reads a ``date`` as a JavaScript ``Date`` at *local* midnight, so Better Auth
    answers ``"2020-01-01T00:00:00.000Z"`` when its process runs in UTC, and a moment on the
    day before (or the same day) elsewhere: its answer depends on its time zone, the gateway's
    does not. The gateway answers as a Better Auth in UTC does (``postgres.rows.json_value`` writes a
    ``datetime.date`` so too).
    """
    days = value[0]
    if days in _DATE_INFINITY:
        return dt.date.max if days > 0 else dt.date.min
    try:
        return _PG_EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        return js_iso((days * 86_400 + _PG_EPOCH_S) * 1000)


def encode_date(value: dt.date) -> tuple[int]:
    """The inverse of ``decode_date``."""
    return ((value - _PG_EPOCH_DATE).days,)


def js_iso(ms: float) -> str | None:
    """JavaScript's ``new Date(ms).toJSON()``: ``toISOString()``, or ``None`` (``null``) out of range."""
    if not abs(ms) <= _JS_MAX_MS:
        return None
    ms = int(ms // 1)
    days, in_day = divmod(ms, 86_400_000)
    year, month, day = _civil(days)
    text_year = f"{year:04d}" if 0 <= year <= _FOUR_DIGITS else f"{year:+07d}"
    seconds, millis = divmod(in_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{text_year}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count from 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9  # noqa: PLR2004  (the algorithm's March-based months)
    return yoe + era * 400 + (month <= 2), month, day  # noqa: PLR2004


# JSON's tokens (RFC 8259), for reading a document too deep to parse recursively.
_TOKEN = re.compile(
    r'[ \t\n\r]*(?:(?P<s>"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")'
    r"|(?P<v>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)|(?P<p>[{}\[\]:,]))"
)
_CLOSE = {"{": "}", "[": "]"}


def object_members(text: str) -> dict[str, str] | None:  # noqa: C901  (one state machine, kept whole)
    """The members of a JSON object, each value as its own text; ``None`` unless ``text`` is one valid object.

    Iterative (no depth limit): how a document nested past the parsers' recursion limit is still
    read, one member at a time, as ``JSON.parse`` reads it whole. A repeated key: the last wins.
    """
    members: dict[str, str] = {}
    stack: list[str] = []  # the open containers
    expect, key, start, pos = "object", "", 0, 0
    while expect != "end":
        match = _TOKEN.match(text, pos)
        if match is None:
            return None
        pos, kind, piece = match.end(), match.lastgroup, match[match.lastgroup or 0]
        if expect == "colon":
            if piece != ":":
                return None
            expect, start = "value", (pos if len(stack) == 1 else start)
            continue
        if expect in ("key", "key or close") and kind == "s":
            key, expect = (json.loads(piece) if len(stack) == 1 else key), "colon"
            continue
        if expect == "comma or close" and piece == ",":
            if len(stack) == 1:
                members[key] = text[start : match.start()].strip(" \t\n\r")
            expect = "key" if stack[-1] == "{" else "value"
            continue
        closing = stack and piece == _CLOSE[stack[-1]]
        if closing and expect in ("comma or close", "key or close", "value or close"):
            if len(stack) == 1 and expect == "comma or close":
                members[key] = text[start : match.start()].strip(" \t\n\r")
            stack.pop()
        elif expect in ("value", "value or close", "object") and piece in _CLOSE and (stack or piece == "{"):
            stack.append(piece)
            expect = "key or close" if piece == "{" else "value or close"
            continue
        elif expect in ("value", "value or close") and kind in ("s", "v"):
            pass
        else:
            return None
        expect = "comma or close" if stack else "end"
    return members if not text[pos:].strip(" \t\n\r") else None
