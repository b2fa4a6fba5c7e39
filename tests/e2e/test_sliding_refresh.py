"""The sliding refresh against the real Better Auth 1.7: two identical aged sessions, one slid by each.

The answer, the ``Set-Cookie`` headers and the resulting row must be Better Auth's, value for
value where the values do not depend on the session (names, attributes, ``Max-Age``), and by the
same rule where they do (``expiresAt - updatedAt = expiresIn``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import re
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from tests.support.better_auth import PASSWORD, BetterAuth, stateless_client
from tests.support.postgres import install_triggers
from tests.support.server import every_worker_listening
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx

WEEK_MS = 7 * 86_400_000
COUNT_UPDATES = """
CREATE TABLE session_updates (n int NOT NULL);
INSERT INTO session_updates VALUES (0);
CREATE FUNCTION count_session_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE session_updates SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER count_session_update AFTER UPDATE ON "session" FOR EACH ROW EXECUTE FUNCTION count_session_update();
"""


def epoch_ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def shape(set_cookies: list[str]) -> list[str]:
    """``Set-Cookie`` headers with each value blanked: names and attributes, which must be equal."""
    return sorted(re.sub(r"^([^=]+)=[^;]*", r"\1=<value>", c) for c in set_cookies)


def cookie_values(response: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c.split("=", 1)[1].split(";", 1)[0] for c in response.headers.get_list("set-cookie")}


class Pair:
    """Two sessions of one user signed in through Better Auth: one for Better Auth, one for the gateway."""

    def __init__(self, better_auth: BetterAuth, client: httpx.AsyncClient) -> None:
        self.ba, self.client = better_auth, client
        self.cookies: list[dict[str, str]] = []
        self.tokens: list[str] = []

    async def sign_in(self, email: str, *, remember: bool = True) -> None:
        await self.ba.sign_up(self.client, email)
        for _ in range(2):
            r = await self.client.post(
                self.ba.url + "/api/auth/sign-in/email",
                json={"email": email, "password": PASSWORD, "rememberMe": remember},
                headers={"origin": self.ba.origin},
            )
            r.raise_for_status()
            self.tokens.append(r.json()["token"])
            self.cookies.append({"cookie": "; ".join(f"{k}={v}" for k, v in cookie_values(r).items())})

    async def age(self, dsn: str) -> None:
        """Both sessions 2 days old: due (``expiresAt - 7 d + 1 d <= now``), identically."""
        conn = await asyncpg.connect(dsn)
        try:
            sql = """UPDATE "session" SET "expiresAt" = date_trunc('milliseconds', now()) + interval '5 days',
                     "updatedAt" = date_trunc('milliseconds', now()) - interval '2 days' WHERE token = ANY($1)"""
            await conn.execute(sql, self.tokens)
        finally:
            await conn.close()


async def rows(dsn: str, tokens: list[str]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch('SELECT * FROM "session" WHERE token = ANY($1)', tokens)
    finally:
        await conn.close()
    by_token = {r["token"]: dict(r) for r in found}
    return [by_token[t] for t in tokens]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with stateless_client() as c:
        yield c


@pytest.mark.parametrize(
    ("scheme", "cache"),
    [("http", "off"), ("https", "compact"), ("http", "jwt"), ("https", "jwe")],
)
async def test_an_aged_session_slides_as_through_better_auth(
    scheme: str, cache: str, node_modules: Path, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """The same body, the same Set-Cookie names and attributes, set-auth-token, and rows slid by the same rule.

    With the cookie cache on, the gateway's new ``session_data`` is one Better Auth accepts: it
    answers from it alone once the row is gone.
    """
    options = {"session": {"cookieCache": {"enabled": True, "strategy": cache}}} if cache != "off" else {}
    peer = BetterAuth(database, base_url_scheme=scheme, env={"OPTIONS": json.dumps(options)})
    try:
        env = {"DATABASE_URL": database, "BETTER_AUTH_URL": peer.origin, "GATEWAY_PLUGINS": "bearer,admin"}
        env |= {"GATEWAY_SECURE_COOKIES": "auto", "GATEWAY_COOKIE_CACHE": cache}
        gw = start_gateway(env)
        pair = Pair(peer, client)
        await pair.sign_in(f"{scheme}-{cache}@example.com")
        await pair.age(database)
        # disableCookieCache: the sessions' own session_data cookies would answer without a lookup.
        query = "?disableCookieCache=true" if cache != "off" else ""
        theirs = await client.get(peer.url + "/api/auth/get-session" + query, headers=pair.cookies[0])
        ours = await client.get(gw.url + "/api/auth/get-session", headers=_without_data(pair.cookies[1]))
        assert theirs.status_code == ours.status_code == 200
        assert shape(ours.headers.get_list("set-cookie")) == shape(theirs.headers.get_list("set-cookie"))
        assert ours.headers["set-auth-token"].split(".")[0] == pair.tokens[1]
        assert theirs.headers["set-auth-token"].split(".")[0] == pair.tokens[0]
        for name in ("access-control-expose-headers", "cache-control", "pragma"):
            assert ours.headers[name] == theirs.headers[name], name
        token_cookie = next(n for n in cookie_values(ours) if n.endswith("session_token"))
        assert cookie_values(ours)[token_cookie] == _cookie_of(pair.cookies[1], token_cookie)  # the token unchanged
        mine, other = ours.json(), theirs.json()
        assert mine.keys() == other.keys()
        assert mine["user"] == other["user"]
        assert mine["session"].keys() == other["session"].keys()
        for body in (mine, other):
            assert epoch_ms(body["session"]["expiresAt"]) - epoch_ms(body["session"]["updatedAt"]) == WEEK_MS
        stored = await rows(database, pair.tokens)
        for row, body in zip(stored, (other, mine), strict=True):
            assert row["expiresAt"] - row["updatedAt"] == dt.timedelta(days=7)
            assert epoch_ms(body["session"]["expiresAt"]) == int(row["expiresAt"].timestamp() * 1000)
        assert stored[0].keys() == stored[1].keys()
        if cache != "off":
            data = {n: v for n, v in cookie_values(ours).items() if "session_data" in n}
            assert len(data) == 1
            conn = await asyncpg.connect(database)
            await conn.execute('DELETE FROM "session" WHERE token = $1', pair.tokens[1])
            await conn.close()
            cached = {"cookie": pair.cookies[1]["cookie"] + "; " + "; ".join(f"{k}={v}" for k, v in data.items())}
            from_cache = await client.get(peer.url + "/api/auth/get-session", headers=_only_new_data(cached, data))
            assert from_cache.json() is not None
            assert from_cache.json()["session"]["expiresAt"] == mine["session"]["expiresAt"]
    finally:
        peer.stop()


def _cookie_of(headers: dict[str, str], name: str) -> str:
    return next(p.split("=", 1)[1] for p in headers["cookie"].split("; ") if p.split("=", 1)[0] == name)


def _without_data(headers: dict[str, str]) -> dict[str, str]:
    """The Cookie header less the session_data cookie Better Auth set at sign-in."""
    return {"cookie": "; ".join(p for p in headers["cookie"].split("; ") if "session_data" not in p.split("=", 1)[0])}


def _only_new_data(headers: dict[str, str], data: dict[str, str]) -> dict[str, str]:
    kept = [p for p in headers["cookie"].split("; ") if "session_data" not in p.split("=", 1)[0]]
    return {"cookie": "; ".join(kept + [f"{k}={v}" for k, v in data.items()])}


async def test_deferred_refresh_and_post(
    node_modules: Path, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """deferSessionRefresh: GET answers needsRefresh, writes nothing; POST slides, as Better Auth; else POST is 405."""
    peer = BetterAuth(database, env={"OPTIONS": json.dumps({"session": {"deferSessionRefresh": True}})})
    try:
        base = {"DATABASE_URL": database, "BETTER_AUTH_URL": peer.origin, "GATEWAY_PLUGINS": "bearer,admin"}
        gw = start_gateway(base | {"GATEWAY_SESSION_DEFER_REFRESH": "true"})
        plain = start_gateway(base)
        pair = Pair(peer, client)
        await pair.sign_in("defer@example.com")
        await pair.age(database)
        before = await rows(database, pair.tokens)
        theirs = await client.get(peer.url + "/api/auth/get-session", headers=pair.cookies[0])
        ours = await client.get(gw.url + "/api/auth/get-session", headers=pair.cookies[1])
        assert theirs.json()["needsRefresh"] is ours.json()["needsRefresh"] is True
        assert ours.headers.get_list("set-cookie") == theirs.headers.get_list("set-cookie") == []
        assert await rows(database, pair.tokens) == before
        theirs = await client.post(
            peer.url + "/api/auth/get-session", headers=pair.cookies[0] | {"origin": peer.origin}
        )
        ours = await client.post(gw.url + "/api/auth/get-session", headers=pair.cookies[1])
        assert shape(ours.headers.get_list("set-cookie")) == shape(theirs.headers.get_list("set-cookie"))
        assert ours.json().keys() == theirs.json().keys() == {"session", "user"}
        for row in await rows(database, pair.tokens):
            assert row["expiresAt"] - row["updatedAt"] == dt.timedelta(days=7)
        refused = await client.post(plain.url + "/api/auth/get-session", headers=pair.cookies[1])
        assert refused.status_code == 405
        assert refused.json()["code"] == "METHOD_NOT_ALLOWED_DEFER_SESSION_REQUIRED"
    finally:
        peer.stop()
    no_defer = BetterAuth(database)
    try:
        theirs = await client.post(
            no_defer.url + "/api/auth/get-session", headers=pair.cookies[0] | {"origin": no_defer.origin}
        )
        assert theirs.status_code == refused.status_code
        assert theirs.json() == refused.json()
    finally:
        no_defer.stop()


async def test_not_remembered_and_disable_refresh_are_not_slid(
    node_modules: Path, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A session signed in without "remember me" (dont_remember), or read with ?disableRefresh, is never slid."""
    peer = BetterAuth(database)
    try:
        gw = start_gateway(
            {"DATABASE_URL": database, "BETTER_AUTH_URL": peer.origin, "GATEWAY_PLUGINS": "bearer,admin"}
        )
        pair = Pair(peer, client)
        await pair.sign_in("forgetful@example.com", remember=False)
        await pair.age(database)
        before = await rows(database, pair.tokens)
        for url, headers in ((peer.url, pair.cookies[0]), (gw.url, pair.cookies[1])):
            r = await client.get(url + "/api/auth/get-session", headers=headers)
            assert r.json() is not None
            assert r.headers.get_list("set-cookie") == [], url
        bare = {"cookie": "; ".join(p for p in pair.cookies[1]["cookie"].split("; ") if "dont_remember" not in p)}
        r = await client.get(gw.url + "/api/auth/get-session?disableRefresh=false", headers=bare)  # "false" is true
        assert r.headers.get_list("set-cookie") == []
        assert await rows(database, pair.tokens) == before
    finally:
        peer.stop()


async def test_two_instances_of_two_workers_write_once(
    better_auth_plain: BetterAuth,
    database: str,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    client: httpx.AsyncClient,
) -> None:
    """Every worker of two instances slides one due session at once: one UPDATE, every answer shows its expiry."""
    await install_triggers(database)
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    env |= {"GATEWAY_PLUGINS": "bearer,admin", "BETTER_AUTH_URL": better_auth_plain.origin}
    gateways = [start_gateway(env, workers=2) for _ in range(2)]
    for gw in gateways:
        await eventually(functools.partial(every_worker_listening, gw.url), within=10)
    pair = Pair(better_auth_plain, client)
    await pair.sign_in("crowd@example.com")
    headers = pair.cookies[1]
    for gw in gateways:  # warm every worker's cache with the session, not yet due
        for _ in range(8):
            assert (await client.get(gw.url + "/api/auth/get-session", headers=headers)).json() is not None
    await pair.age(database)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(COUNT_UPDATES)
        # The cached entries are stale (the age is news to them): each worker finds the session due.
        answers = await asyncio.gather(
            *(client.get(gw.url + "/api/auth/get-session", headers=headers) for gw in gateways for _ in range(12))
        )
        assert await conn.fetchval("SELECT n FROM session_updates") == 1
        row = await conn.fetchrow('SELECT "expiresAt" FROM "session" WHERE token = $1', pair.tokens[1])
    finally:
        await conn.close()
    assert row is not None
    expiry = row["expiresAt"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert {r.json()["session"]["expiresAt"] for r in answers} == {expiry}
    assert sum(1 for r in answers if r.headers.get_list("set-cookie")) >= 1


async def test_validate_slides_a_bearer_session_with_refresh_all(
    better_auth_plain: BetterAuth, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """GATEWAY_SESSION_REFRESH=all: /validate slides a due bearer session (cached or not), answers set-auth-token."""
    env = {"DATABASE_URL": database, "GATEWAY_SESSION_REFRESH": "all", "BETTER_AUTH_URL": better_auth_plain.origin}
    gw = start_gateway(env)
    pair = Pair(better_auth_plain, client)
    await pair.sign_in("api@example.com")
    bearer = {"authorization": f"Bearer {pair.tokens[1]}"}
    first = await client.get(gw.url + "/validate", headers=bearer)
    assert first.status_code == 200
    assert "set-auth-token" not in first.headers  # not due
    await pair.age(database)
    slid = await client.get(gw.url + "/validate", headers=bearer)  # a cache hit, due: the full path
    assert slid.status_code == 200
    assert slid.headers["set-auth-token"].split(".")[0] == pair.tokens[1]
    row = (await rows(database, pair.tokens))[1]
    assert row["expiresAt"] - row["updatedAt"] == dt.timedelta(days=7)
    again = await client.get(gw.url + "/validate", headers=bearer)
    assert again.status_code == 200
    assert "set-auth-token" not in again.headers


@pytest.fixture
def better_auth_plain(node_modules: Path, database: str) -> Any:
    peer = BetterAuth(database)
    yield peer
    peer.stop()
