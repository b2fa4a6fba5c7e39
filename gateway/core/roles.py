"""Role lists as Better Auth writes them, and the names a policy may ask for.

Better Auth keeps several roles in one comma-separated string, in the admin plugin's
``user.role`` and in the organization plugin's ``member.role`` alike (``"admin,member"``), and
reads it as the organization plugin's ``parseRoleList`` does: split on ``,``, each part trimmed,
empty parts dropped. A policy matches when any of the holder's roles is one it allows.

A role a policy names is refused unless it can be compared one way: an empty name, one with a
comma (it would be two roles) or surrounding blanks (Better Auth trims them) never matches what
Better Auth reads, so it is a configuration error, never a condition that silently fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


# What JavaScript's String.prototype.trim() removes (ECMAScript WhiteSpace and LineTerminator).
# Not str.strip()'s set: that also removes \x1c-\x1f and \x85 and keeps \ufeff, so a stored
# "\x1fowner" (not "owner" to Better Auth) would read as "owner" here (red team).
_JS_WHITESPACE = (
    " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def role_list(text: str | None) -> frozenset[str]:
    """The roles in a role string (``None``: none), as Better Auth's ``parseRoleList`` reads them."""
    if not text:
        return frozenset()
    return frozenset(part for part in (p.strip(_JS_WHITESPACE) for p in text.split(",")) if part)


def any_role(text: str | None, allowed: frozenset[str]) -> bool:
    """Whether a role string holds any of the ``allowed`` roles (no role, or ``None``: no)."""
    return not role_list(text).isdisjoint(allowed)


def checked_roles(names: Iterable[object], where: str) -> frozenset[str]:
    """The role names a policy asks for, each one a single role as Better Auth reads one, at least one.

    Raises:
        ValueError: a name is not a string, is empty, holds a comma or surrounding blanks, or
            there is none (``where`` names the condition).
    """
    roles = []
    for name in names:
        blank = isinstance(name, str) and (name != name.strip() or name != name.strip(_JS_WHITESPACE))
        if not isinstance(name, str) or not name or blank or "," in name:
            msg = f"{where}: {name!r} is not a role name (one role: no comma, no surrounding blanks, not empty)"
            raise ValueError(msg)
        roles.append(name)
    if not roles:  # "allow these roles: none" would read as "no condition", i.e. everyone
        msg = f"{where}: names no role (name at least one, or leave the condition out)"
        raise ValueError(msg)
    return frozenset(roles)


def split_roles(values: Iterable[str]) -> list[str]:
    """The parts of comma-separated lists (a query's ``admin, owner``), trimmed; empty parts kept (to be refused)."""
    return [part.strip() for value in values for part in value.split(",")]


def org_condition(names: Iterable[object] | None, where: str, *, organizations: bool) -> frozenset[str] | None:
    """An ``allowed_org_roles`` condition as ``checked_roles`` takes it; ``None``: there is none.

    ``organizations``: whether the member's role is read (GATEWAY_ORGANIZATIONS=on): else the
    condition could never be met, and is refused rather than failing every request.

    Raises:
        ValueError: as ``checked_roles``, or the feature is off.
    """
    if names is None:
        return None
    roles = checked_roles(names, where)
    if not organizations:
        msg = f"{where} needs GATEWAY_ORGANIZATIONS=on"
        raise ValueError(msg)
    return roles
