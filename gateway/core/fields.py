"""Which fields of a user and a session Better Auth returns: what the gateway may answer, no more.

Better Auth's get-session returns the fields its configuration declares (``db/schema.ts``
``getFields``; its adapters read nothing else): the core fields, the fields of the plugins in
use, and ``additionalFields``, less those marked ``returned: false``. A column another app
added, a plugin column left by an old migration, or an additional field meant to stay
server-side is never in its answer, so it is never in the gateway's (get-session,
``/v1/validate``, the Python client): the operator names the plugins in use
(``GATEWAY_PLUGINS``) and the returned additional fields (``GATEWAY_USER_ADDITIONAL_FIELDS``,
``GATEWAY_SESSION_ADDITIONAL_FIELDS``); ``GATEWAY_*_HIDDEN_FIELDS`` takes fields back out. A
column's mere existence never widens an answer.

The gateway also reads a few fields to decide, whether or not it may return them
(``DECISION_USER_FIELDS``): a ban refuses, the role feeds the identity headers and
``allowed_roles``.
"""

from __future__ import annotations

from typing import NamedTuple

# @better-auth/core 1.7.25, db/get-tables: the core schema ("id" is always added).
CORE_USER = ("id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt")
CORE_SESSION = ("id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId")

# better-auth 1.7.25, dist/plugins/*: the (user fields, session fields) each plugin declares;
# none of them is ``returned: false``. Plugins that add no user or session field are listed
# with none, so that a deployment can name every plugin it uses.
PLUGINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "admin": (("role", "banned", "banReason", "banExpires"), ("impersonatedBy",)),  # admin/schema
    "anonymous": (("isAnonymous",), ()),  # anonymous/schema
    "lastLoginMethod": (("lastLoginMethod",), ()),  # last-login-method, with storeInDatabase: true
    "organization": ((), ("activeOrganizationId",)),  # organization/organization (schema.session)
    "organization:teams": ((), ("activeOrganizationId", "activeTeamId")),  # with teams: { enabled: true }
    "phoneNumber": (("phoneNumber", "phoneNumberVerified"), ()),  # phone-number/schema
    "twoFactor": (("twoFactorEnabled",), ()),  # two-factor/schema (its own table aside)
    "username": (("username", "displayUsername"), ()),  # username/schema
    **dict.fromkeys(
        (
            "bearer",
            "jwt",
            "multiSession",
            "magicLink",
            "emailOTP",
            "oneTimeToken",
            "oneTap",
            "genericOAuth",
            "oAuthProxy",
            "openAPI",
            "captcha",
            "haveIBeenPwned",
            "siwe",
            "deviceAuthorization",
        ),
        ((), ()),
    ),
}

# Read for decisions whenever the columns exist; returned only if declared (admin plugin).
DECISION_USER_FIELDS = ("role", "banned", "banExpires")

# What an answer says about who is signed in, beyond the JSON body: the identity a proxy passes
# upstream (``GATEWAY_IDENTITY_HEADERS`` renames its headers; ``config`` checks the names).
IDENTITY_FIELDS = ("user", "email", "name", "session_id", "role", "groups")


class Fields(NamedTuple):
    """The user and session fields Better Auth returns for one configuration."""

    user: frozenset[str]
    session: frozenset[str]

    def user_of(self, user: dict[str, object]) -> dict[str, object]:
        """Only the returned fields of a user in Better Auth's JSON shape."""
        return {k: v for k, v in user.items() if k in self.user}

    def session_of(self, session: dict[str, object]) -> dict[str, object]:
        """Only the returned fields of a session in Better Auth's JSON shape (the token aside)."""
        return {k: v for k, v in session.items() if k in self.session and k != "token"}


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (blanks dropped)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def returned_fields(plugins: str, user_extra: str, session_extra: str, user_hidden: str, session_hidden: str) -> Fields:
    """Core + the plugins' fields + the additional fields, less the hidden ones.

    Raises:
        KeyError: a plugin not in ``PLUGINS`` (``config`` reports it first).
    """
    user, session = set(CORE_USER), set(CORE_SESSION)
    for plugin in names(plugins):
        user_fields, session_fields = PLUGINS[plugin]
        user.update(user_fields)
        session.update(session_fields)
    user.update(names(user_extra))
    session.update(names(session_extra))
    return Fields(frozenset(user - set(names(user_hidden))), frozenset(session - set(names(session_hidden))))
