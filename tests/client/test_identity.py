"""The identity the client reads: every field the gateway can answer is typed, anything else kept in ``extra``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from better_auth_gateway_client import GatewayClient, Session, User
from better_auth_gateway_client.identity import MalformedAnswer, decode_identity, parse_date

from gateway.core.fields import CORE_SESSION, CORE_USER, PLUGINS
from gateway.postgres import seed

if TYPE_CHECKING:
    import asyncpg

    from tests.support.server import Server

ALL_PLUGINS = "admin,organization:teams,username,anonymous,phoneNumber,twoFactor,lastLoginMethod"
PLUGIN_COLUMNS = """
alter table "user" add column "username" text, add column "displayUsername" text,
  add column "isAnonymous" boolean, add column "phoneNumber" text, add column "phoneNumberVerified" boolean,
  add column "twoFactorEnabled" boolean, add column "lastLoginMethod" text, add column "plan" text;
alter table "session" add column "activeTeamId" text, add column "deviceName" text;
"""


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def attributes(cls: type[Any]) -> set[str]:
    return {camel(f.name) for f in dataclasses.fields(cls)} - {"extra"}


def test_every_field_the_gateway_knows_is_typed() -> None:
    """The core fields and every plugin's (gateway.core.fields) are attributes; the token is not."""
    user_fields = set(CORE_USER) | {f for user, _ in PLUGINS.values() for f in user}
    session_fields = set(CORE_SESSION) - {"token"} | {f for _, session in PLUGINS.values() for f in session}
    assert attributes(User) == user_fields
    assert attributes(Session) == session_fields


async def test_a_real_answer_with_every_plugin(db: asyncpg.Connection, database: str, start_gateway: Any) -> None:
    """Every plugin and additional fields: each answered field lands typed, the additional ones in ``extra``."""
    await db.execute(PLUGIN_COLUMNS)
    banned_until = dt.datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    fields: dict[str, Any] = {
        "role": "user",
        "banned": False,
        "banExpires": banned_until,
        "username": "ada",
        "isAnonymous": False,
    }
    uid = await seed.create_user(
        db, email="ada@example.com", name="Ada", **fields, plan="pro", phoneNumberVerified=True
    )
    token = await seed.create_session(db, uid)
    await db.execute("""update "session" set "activeTeamId" = 'team-1', "deviceName" = 'laptop'""")
    env = {"DATABASE_URL": database, "GATEWAY_PLUGINS": ALL_PLUGINS}
    env |= {"GATEWAY_USER_ADDITIONAL_FIELDS": "plan", "GATEWAY_SESSION_ADDITIONAL_FIELDS": "deviceName"}
    gw: Server = start_gateway(env)
    async with httpx.AsyncClient() as http:
        raw = (await http.post(gw.url + "/v1/validate", json={"token": token})).json()
    async with GatewayClient(gw.url) as client:
        identity = await client.validate(token)
    assert identity is not None
    assert identity.session is not None
    user, session = identity.user, identity.session
    assert (user.id, user.username, user.role, user.banned, user.is_anonymous) == (uid, "ada", "user", False, False)
    assert user.phone_number_verified is True
    assert user.ban_expires == banned_until
    assert user.created_at == parse_date(raw["user"]["createdAt"])
    assert user.extra == {"plan": "pro"}
    assert session.active_team_id == "team-1"
    assert session.user_id == uid
    assert session.extra == {"deviceName": "laptop"}
    assert session.expires_at == parse_date(raw["session"]["expiresAt"])
    assert set(raw["user"]) - {"plan"} <= attributes(User)
    assert set(raw["session"]) - {"deviceName"} <= attributes(Session)


def test_dates_as_javascript_writes_them() -> None:
    """toISOString() dates are UTC and aware; six-digit years past 9999 or before 0 are datetime's far ends."""
    assert parse_date("2026-11-30T13:22:06.123Z") == dt.datetime(2026, 11, 30, 13, 22, 6, 123000, tzinfo=dt.UTC)
    assert parse_date("2026-11-30T13:22:06") == dt.datetime(2026, 11, 30, 13, 22, 6, tzinfo=dt.UTC)
    assert parse_date("+010000-01-01T00:00:00.000Z") == dt.datetime.max.replace(tzinfo=dt.UTC)
    assert parse_date("-000001-01-01T00:00:00.000Z") == dt.datetime.min.replace(tzinfo=dt.UTC)
    with pytest.raises(MalformedAnswer):
        parse_date("yesterday")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>200 OK</html>",
        b"null",
        b"[]",
        b'{"session": null}',
        b'{"user": {"email": "no-id@example.com"}, "session": null}',
        b'{"user": {"id": 7}, "session": null}',
        b'{"user": {"id": "u", "emailVerified": "yes"}, "session": null}',
        b'{"user": {"id": "u"}, "session": {"id": "s", "userId": "u"}}',
        b'{"user": {"id": "u"}, "session": {"id": "s", "userId": "u", "expiresAt": "soon"}}',
        b'{"user": {"id": "u"}, "session": []}',
    ],
)
def test_what_is_not_an_identity_is_refused(body: bytes) -> None:
    """Not JSON, not an object, no user id, a field of the wrong type, a session without expiresAt: MalformedAnswer."""
    with pytest.raises(MalformedAnswer):
        decode_identity(body)


def test_identities_compare_and_hash_and_stay_frozen() -> None:
    """Two readings of one answer are equal and hash alike; nothing in them can be changed."""
    body = {"user": {"id": "u", "plan": "pro"}, "session": {"id": "s", "userId": "u", "expiresAt": "2030-01-01"}}
    one, two = decode_identity(json.dumps(body).encode()), decode_identity(json.dumps(body).encode())
    assert one == two
    assert hash(one) == hash(two)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.user.id = "someone else"  # type: ignore[misc]
    with pytest.raises(TypeError):
        one.user.extra["plan"] = "free"  # type: ignore[index]
    assert decode_identity(b'{"user": {"id": "u"}, "session": null}').session is None  # a JWT's identity


@pytest.mark.parametrize("role", ["\x1fowner", "owner\x1c", "\x85owner", "\ufeffowner", "member, owner", "\xa0owner"])
def test_organization_roles_read_as_better_auth_reads_them(role: str) -> None:
    """Red team: ``Organization.roles`` trimmed with str.strip() (``"\\x1fowner"`` read as ``owner``).

    ``gateway.core.roles.role_list`` is checked against Better Auth's own ``parseRoleList``
    (tests/core/test_roles.py); an app asking ``"owner" in organization.roles`` must get its answer.
    """
    from better_auth_gateway_client import Organization  # noqa: PLC0415

    from gateway.core.roles import role_list  # noqa: PLC0415

    assert set(Organization(id="o", role=role).roles) == role_list(role)
