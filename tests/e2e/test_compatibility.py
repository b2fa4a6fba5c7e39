"""Every way Better Auth can be configured, against the real Better Auth (npm ``better-auth`` 1.7).

For each configuration a real Better Auth server runs on a fresh database (it migrates its own
schema), users and sessions are made through its HTTP API, and for valid, tampered, expired,
signed-out, revoked and banned sessions the gateway must answer what Better Auth's own
get-session answers: the same JSON from ``/api/auth/get-session``, and from ``/validate`` a 200
with that user's identity or a 401. Revocations go through the triggers, as in production.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from gateway.credentials.tokens import sign
from tests.support.better_auth import BetterAuth
from tests.support.credentials import SECRET
from tests.support.postgres import install_triggers
from tests.support.server import wait_listening
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    import httpx

    from tests.support.server import Server


OLD_SECRET = "an-older-secret-that-was-rotated-out-0123456789"
# Drizzle's generator: snake_case columns; usePlural: plural tables. Given to Better Auth as
# modelName/fields, so that its own migration creates exactly those tables.
_SNAKE_USER = {"emailVerified": "email_verified", "createdAt": "created_at", "updatedAt": "updated_at"}
_SNAKE_SESSION = {
    "expiresAt": "expires_at",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "ipAddress": "ip_address",
    "userAgent": "user_agent",
    "userId": "user_id",
}
_SNAKE_ADMIN = {
    "schema": {
        "user": {"fields": {"banReason": "ban_reason", "banExpires": "ban_expires"}},
        "session": {"fields": {"impersonatedBy": "impersonated_by"}},
    }
}


@dataclass(frozen=True)
class Config:
    """One Better Auth configuration and the gateway settings that mirror it."""

    plugins: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    gateway: dict[str, str] = field(default_factory=dict)
    better_auth_env: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    cookie: str = "better-auth.session_token"
    # Where sessions and users live, for the SQL the tests run themselves.
    session_table: str = "session"
    user_table: str = "user"
    expires_column: str = "expiresAt"
    user_id_column: str = "userId"
    # SQL run once Better Auth has migrated, before the gateway starts.
    setup_sql: tuple[str, ...] = ()
    # Whether Better Auth reads sessions from the database (not from its secondaryStorage first).
    reads_database: bool = True
    # Setting overrides for installing the triggers on this layout.
    triggers: dict[str, object] = field(default_factory=dict)


CONFIGS = {
    "default": Config(),
    "__Secure- cookies (https base URL)": Config(scheme="https", cookie="__Secure-better-auth.session_token"),
    "custom cookiePrefix": Config(
        options={"advanced": {"cookiePrefix": "myapp"}},
        gateway={"GATEWAY_COOKIE_PREFIX": "myapp"},
        cookie="myapp.session_token",
    ),
    "custom cookie name": Config(
        options={"advanced": {"cookies": {"session_token": {"name": "sid"}}}},
        gateway={"GATEWAY_SESSION_COOKIE_NAME": "sid"},
        cookie="sid",
    ),
    "bearer": Config(plugins={"bearer": {}}),
    "bearer requireSignature": Config(
        plugins={"bearer": {"requireSignature": True}}, gateway={"GATEWAY_ACCEPT_UNSIGNED_BEARER": "false"}
    ),
    "admin (ban, impersonation)": Config(plugins={"admin": {}}, gateway={"GATEWAY_PLUGINS": "admin"}),
    "organization": Config(plugins={"organization": {}}, gateway={"GATEWAY_PLUGINS": "organization"}),
    "drizzle snake_case, usePlural": Config(
        plugins={"admin": _SNAKE_ADMIN},
        options={
            "user": {"modelName": "users", "fields": _SNAKE_USER},
            "session": {"modelName": "sessions", "fields": _SNAKE_SESSION},
        },
        gateway={"GATEWAY_SCHEMA_PRESET": "drizzle", "GATEWAY_USE_PLURAL": "true", "GATEWAY_PLUGINS": "admin"},
        session_table="sessions",
        user_table="users",
        expires_column="expires_at",
        user_id_column="user_id",
        triggers={"schema_preset": "drizzle", "use_plural": True},
    ),
    "BETTER_AUTH_SECRETS rotation": Config(
        better_auth_env={"BETTER_AUTH_SECRET": "", "BETTER_AUTH_SECRETS": f"2:{SECRET},1:{OLD_SECRET}"},
        gateway={"BETTER_AUTH_SECRETS": f"2:{SECRET},1:{OLD_SECRET}"},
    ),
    # Nothing to configure: a column Better Auth does not declare is never returned.
    "columns Better Auth does not return": Config(
        setup_sql=(
            """ALTER TABLE "user" ADD COLUMN "internalNote" text DEFAULT 'not for clients'""",
            """ALTER TABLE "session" ADD COLUMN "legacyFlag" boolean DEFAULT true""",
        ),
    ),
    # Columns an earlier admin + organization migration left, those plugins no longer configured.
    "plugin columns left by a migration": Config(
        plugins={"bearer": {}},
        setup_sql=(
            """ALTER TABLE "user" ADD COLUMN "role" text DEFAULT 'admin', ADD COLUMN "banned" boolean""",
            """ALTER TABLE "session" ADD COLUMN "activeOrganizationId" text DEFAULT 'org-from-before'""",
        ),
    ),
    "many plugins": Config(
        plugins={
            "admin": {},
            "organization": {"teams": {"enabled": True}},
            "username": {},
            "anonymous": {},
            "phoneNumber": {},
            "twoFactor": {},
            "lastLoginMethod": {"storeInDatabase": True},
        },
        gateway={
            "GATEWAY_PLUGINS": "admin,organization:teams,username,anonymous,phoneNumber,twoFactor,lastLoginMethod"
        },
    ),
    "additionalFields (one returned: false)": Config(
        options={
            "user": {
                "additionalFields": {
                    "nickname": {"type": "string", "required": False, "defaultValue": "nick"},
                    "internalScore": {"type": "number", "required": False, "returned": False, "defaultValue": 7},
                }
            },
            "session": {
                "additionalFields": {"deviceLabel": {"type": "string", "required": False, "defaultValue": "d"}}
            },
        },
        gateway={"GATEWAY_USER_ADDITIONAL_FIELDS": "nickname", "GATEWAY_SESSION_ADDITIONAL_FIELDS": "deviceLabel"},
    ),
    "storeSessionInDatabase + preserveSessionInDatabase": Config(
        options={"session": {"storeSessionInDatabase": True, "preserveSessionInDatabase": True}},
        better_auth_env={"SECONDARY_STORAGE": "memory"},
        reads_database=False,
    ),
}


class Peers:
    """Better Auth and the gateway side by side, asked the same questions."""

    def __init__(self, config: Config, better_auth: BetterAuth, gateway: Server, client: httpx.AsyncClient) -> None:
        self.config = config
        self.ba = better_auth
        self.gw = gateway
        self.client = client

    async def sign_up(self, email: str) -> tuple[dict[str, Any], dict[str, str], httpx.Response]:
        """A new user through Better Auth: its JSON, its cookie header, the response."""
        r = await self.ba.sign_up(self.client, email)
        return r.json(), {"cookie": cookie_header(r, self.config.cookie)}, r

    async def post(self, path: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> httpx.Response:
        r = await self.client.post(self.ba.url + path, json=body or {}, headers=headers | {"origin": self.ba.origin})
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
        return r

    async def agree(self, headers: dict[str, str], *, valid: bool) -> dict[str, Any] | None:
        """Both answer the same for ``headers``, and that answer is ``valid`` (or not).

        A refusal may take the invalidation a moment to reach the gateway: it is awaited first.
        """
        if not valid:
            await eventually(lambda: self._refused(headers), within=3)
        ours = await self.client.get(self.gw.url + "/api/auth/get-session", headers=headers)
        decision = await self.client.get(self.gw.url + "/validate", headers=headers)
        theirs = await self.client.get(self.ba.url + "/api/auth/get-session", headers=headers)
        assert theirs.status_code == ours.status_code == 200
        assert (theirs.json() is not None) == valid, f"Better Auth itself answered {theirs.text}"
        assert ours.json() == theirs.json(), _diff(ours.json(), theirs.json())
        if valid:
            assert decision.status_code == 200
            assert decision.headers["x-auth-request-user"] == theirs.json()["user"]["id"]
            assert decision.headers["x-auth-request-session-id"] == theirs.json()["session"]["id"]
        else:
            assert decision.status_code == 401
        answer: dict[str, Any] | None = theirs.json()
        return answer

    async def _refused(self, headers: dict[str, str]) -> bool:
        return (await self.client.get(self.gw.url + "/validate", headers=headers)).status_code == 401


def cookie_header(response: httpx.Response, name: str) -> str:
    """The Cookie header a browser would send back after ``response`` (every cookie it set)."""
    pairs = [h.split(";", 1)[0] for h in response.headers.get_list("set-cookie")]
    live = [p for p in pairs if p.partition("=")[2]]  # an empty value deletes a cookie
    assert any(p.startswith(name + "=") for p in live), f"no {name} cookie in {pairs}"
    return "; ".join(live)


def tampered(headers: dict[str, str], name: str) -> dict[str, str]:
    """The same cookie with one character of its signature changed."""

    def flip(m: re.Match[str]) -> str:
        value = m.group(2)
        at = value.rfind(".") + 3
        return m.group(1) + value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]

    return {"cookie": re.sub(rf"(^|; )({re.escape(name)}=[^;]+)", flip, headers["cookie"], count=1)}


@pytest.mark.parametrize("name", list(CONFIGS))
async def test_gateway_answers_as_better_auth(
    name: str,
    node_modules: Path,
    database: str,
    bare_db: asyncpg.Connection,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    config = CONFIGS[name]
    plugins = config.plugins
    env = {"OPTIONS": _json(config.options), "PLUGINS": _json(plugins)} | config.better_auth_env
    better_auth = BetterAuth(database, config.scheme, env)
    try:
        for sql in config.setup_sql:
            await bare_db.execute(sql)
        await install_triggers(database, **config.triggers)
        # The gateway follows Better Auth's base URL for its cookie names, as Better Auth does.
        base = {"GATEWAY_SECURE_COOKIES": "auto", "GATEWAY_BASE_URL": better_auth.origin}
        gateway = start_gateway({"DATABASE_URL": database} | base | config.gateway)
        await wait_listening(ba_client, gateway)
        peers = Peers(config, better_auth, gateway, ba_client)
        s, u = f'"{config.session_table}"', f'"{config.user_table}"'
        expires, user_id = f'"{config.expires_column}"', f'"{config.user_id_column}"'

        await peers.agree({}, valid=False)
        ada, ada_cookie, signup = await peers.sign_up("ada@example.com")
        await peers.agree(ada_cookie, valid=True)
        await peers.agree(tampered(ada_cookie, config.cookie), valid=False)
        if "bearer" in plugins:
            await peers.agree({"authorization": f"Bearer {signup.headers['set-auth-token']}"}, valid=True)
            unsigned_ok = not plugins["bearer"].get("requireSignature")
            await peers.agree({"authorization": f"Bearer {ada['token']}"}, valid=unsigned_ok)
        if "BETTER_AUTH_SECRETS" in config.better_auth_env:
            # Better Auth signs and checks cookies with the current (first) secret only.
            old = quote(sign(ada["token"], OLD_SECRET), safe="")
            await peers.agree({"cookie": f"{config.cookie}={old}"}, valid=False)
        if "organization" in plugins:
            await peers.post("/api/auth/organization/create", ada_cookie, {"name": "Acme", "slug": "acme"})
            # The UPDATE's notification evicts the cached session within milliseconds, not at once.
            await eventually(lambda: _active_organization(peers, ada_cookie), within=3)
            session = await peers.agree(ada_cookie, valid=True)
            assert session is not None
            assert session["session"]["activeOrganizationId"]
        if "admin" in plugins:
            await _admin_scenarios(peers, bare_db, u)

        if config.reads_database:
            # Expired: Better Auth refuses a row whose expiresAt has passed (and then deletes it).
            _, grace_cookie, grace = await peers.sign_up("grace@example.com")
            await peers.agree(grace_cookie, valid=True)
            await bare_db.execute(
                f"UPDATE {s} SET {expires} = now() - interval '1 minute' WHERE {user_id} = $1",  # noqa: S608  (test constants)
                grace.json()["user"]["id"],
            )
            await peers.agree(grace_cookie, valid=False)

        # Signed out, and every session of a user revoked, through Better Auth's own API.
        await peers.post("/api/auth/sign-out", ada_cookie)
        await peers.agree(ada_cookie, valid=False)
        if "preserveSessionInDatabase" in str(config.options):
            # Revoked by UPDATE: the row stays, its expiresAt moved to the moment of sign-out.
            still = await bare_db.fetchval(
                f'SELECT count(*) FROM {s} WHERE "token" = $1 AND {expires} <= now()',  # noqa: S608
                ada["token"],
            )
            assert still == 1
        _, bob_cookie, _ = await peers.sign_up("bob@example.com")
        await peers.agree(bob_cookie, valid=True)
        await peers.post("/api/auth/revoke-sessions", bob_cookie)
        await peers.agree(bob_cookie, valid=False)
    finally:
        better_auth.stop()


async def _admin_scenarios(peers: Peers, bare_db: asyncpg.Connection, users: str) -> None:
    """Impersonation (and its end), then a ban, by an admin, through the admin plugin's API."""
    root, root_cookie, _ = await peers.sign_up("root@example.com")
    await bare_db.execute(f'UPDATE {users} SET "role" = \'admin\' WHERE "id" = $1', root["user"]["id"])  # noqa: S608
    eve, eve_cookie, _ = await peers.sign_up("eve@example.com")
    await peers.agree(eve_cookie, valid=True)

    impersonation = await peers.post("/api/auth/admin/impersonate-user", root_cookie, {"userId": eve["user"]["id"]})
    as_eve = {"cookie": cookie_header(impersonation, peers.config.cookie)}
    session = await peers.agree(as_eve, valid=True)
    assert session is not None
    assert session["session"]["impersonatedBy"] == root["user"]["id"]
    await peers.post("/api/auth/admin/stop-impersonating", as_eve)
    await peers.agree(as_eve, valid=False)
    await peers.agree(root_cookie, valid=True)  # the admin's own session lives on

    await peers.post("/api/auth/admin/ban-user", root_cookie, {"userId": eve["user"]["id"]})
    await peers.agree(eve_cookie, valid=False)


async def _active_organization(peers: Peers, headers: dict[str, str]) -> bool:
    r = await peers.client.get(peers.gw.url + "/api/auth/get-session", headers=headers)
    return bool((r.json() or {}).get("session", {}).get("activeOrganizationId"))


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value) if value else ""


def _diff(ours: Any, theirs: Any) -> str:
    """Where two get-session answers differ, field by field."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return f"ours {ours!r}, Better Auth's {theirs!r}"
    lines = []
    for part in ("session", "user"):
        a, b = ours.get(part) or {}, theirs.get(part) or {}
        lines += [
            f"{part}.{k}: ours {a.get(k, '<absent>')!r}, theirs {b.get(k, '<absent>')!r}"
            for k in a.keys() | b.keys()
            if a.get(k, ...) != b.get(k, ...)
        ]
    return "; ".join(lines)
