"""Who a session belongs to: Better Auth's user and session, typed, read from the gateway's JSON.

The gateway answers ``POST /v1/validate`` with ``{"user": {...}, "session": {...}}`` in Better
Auth's own shape (camelCase, dates as ``Date.prototype.toISOString()``). Only the standard
library reads it, so that this package needs nothing but httpx.

The fields of Better Auth's core schema and of its plugins (better-auth 1.7) are attributes,
``None`` where the gateway does not answer them (a plugin not in ``GATEWAY_PLUGINS``). Any other
field, such as an ``additionalFields`` one, is kept as it came in ``extra``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import typing
from collections.abc import Mapping  # noqa: TC003  (get_type_hints resolves the annotations at run time)
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

# JavaScript writes years past 9999 as "+010000-…" and before 0 as "-000001-…"; Python's
# datetime stops at 9999 and 1, so those become its far ends rather than a failure to read.
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


class MalformedAnswer(ValueError):
    """The gateway's 200 did not hold an identity (not JSON, or not Better Auth's shape)."""


def _frozen(value: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value or {}))


def _extra() -> Any:
    # Compared, not hashed (a mapping is not hashable), and read-only as the rest of the value.
    return dataclasses.field(default_factory=_frozen, hash=False)


# What JavaScript's String.prototype.trim() removes (Better Auth's parseRoleList trims with it).
_JS_WHITESPACE = (
    " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """A Better Auth user, as its get-session reports it."""

    id: str
    email: str | None = None
    name: str | None = None
    email_verified: bool | None = None
    image: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # admin plugin
    role: str | None = None
    banned: bool | None = None
    ban_reason: str | None = None
    ban_expires: dt.datetime | None = None
    # username, anonymous, phoneNumber, twoFactor and lastLoginMethod plugins
    username: str | None = None
    display_username: str | None = None
    is_anonymous: bool | None = None
    phone_number: str | None = None
    phone_number_verified: bool | None = None
    two_factor_enabled: bool | None = None
    last_login_method: str | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def roles(self) -> tuple[str, ...]:
        """The admin plugin's roles (it keeps them comma-separated in one field)."""
        return tuple(r.strip() for r in (self.role or "").split(",") if r.strip())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A Better Auth session, without its token (the gateway never answers it)."""

    id: str
    user_id: str
    expires_at: dt.datetime
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    # admin plugin: the admin behind an impersonation; organization plugin: the active ones
    impersonated_by: str | None = None
    active_organization_id: str | None = None
    active_team_id: str | None = None
    extra: Mapping[str, Any] = _extra()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Organization:
    """The session's active organization and the member's role in it (a gateway with GATEWAY_ORGANIZATIONS=on)."""

    id: str
    role: str | None = None  # None: the user is no member of it (any more)
    extra: Mapping[str, Any] = _extra()

    @property
    def roles(self) -> tuple[str, ...]:
        """The member's roles (several comma-separated in one field), as Better Auth's ``parseRoleList`` reads them.

        Trimmed as JavaScript's ``trim()`` trims: ``str.strip()`` would read a leading U+001F as a blank.
        """
        return tuple(r for r in (part.strip(_JS_WHITESPACE) for part in (self.role or "").split(",")) if r)


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid session belongs to (``session`` is ``None`` for a JWT of the JWT plugin).

    ``organization``: the active one, from a gateway with organizations on; else ``None``.
    """

    user: User
    session: Session | None
    organization: Organization | None = None


def decode_identity(body: bytes) -> Identity:
    """Read the body of the gateway's 200; raise ``MalformedAnswer`` if it is not an identity."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedAnswer("the answer is not JSON") from exc
    if not isinstance(document, dict) or "user" not in document:
        raise MalformedAnswer("the answer holds no user")
    session, organization = document.get("session"), document.get("organization")
    return Identity(
        _USER.read(document["user"]),
        None if session is None else _SESSION.read(session),
        None if organization is None else _ORGANIZATION.read(organization),
    )


def parse_date(value: str) -> dt.datetime:
    """A date of Better Auth's JSON (``toISOString()``), always timezone-aware."""
    if value.startswith(("+", "-")):
        return _LATEST if value[0] == "+" else _EARLIEST  # six-digit years: past 9999 or before 0
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedAnswer(f"not a date: {value[:40]!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise MalformedAnswer(f"not a string: {type(value).__name__}")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise MalformedAnswer(f"not a boolean: {type(value).__name__}")


def _date(value: object) -> dt.datetime:
    return parse_date(_string(value))


_READERS: dict[object, Callable[[object], object]] = {str: _string, bool: _boolean, dt.datetime: _date}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


class _Shape:
    """How one class is read from its JSON object: each attribute's key, reader, and whether it may be absent."""

    def __init__(self, cls: type[Any]) -> None:
        self._cls = cls
        hints = typing.get_type_hints(cls)
        self._fields: list[tuple[str, str, Callable[[object], object], bool]] = []
        for field in dataclasses.fields(cls):
            if field.name == "extra":
                continue
            kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
            kind = next(k for k in kinds if k is not type(None))
            optional = field.default is None
            self._fields.append((field.name, _camel(field.name), _READERS[kind], optional))
        self._known = frozenset(key for _, key, _, _ in self._fields)

    def read(self, raw: object) -> Any:
        if not isinstance(raw, dict):
            raise MalformedAnswer(f"{self._cls.__name__} is not an object")
        values: dict[str, object] = {}
        for name, key, reader, optional in self._fields:
            value = raw.get(key)
            if value is None:
                if not optional:
                    raise MalformedAnswer(f"{self._cls.__name__} has no {key}")
                continue
            try:
                values[name] = reader(value)
            except MalformedAnswer as exc:
                raise MalformedAnswer(f"{self._cls.__name__}.{key}: {exc}") from None
        extra = {k: v for k, v in raw.items() if k not in self._known}
        return self._cls(**values, extra=_frozen(extra))


_USER = _Shape(User)
_SESSION = _Shape(Session)
_ORGANIZATION = _Shape(Organization)
