"""The gateway against the real Better Auth 1.7 (npm ``better-auth`` with ``pg``) on one database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from tests.support.better_auth import BetterAuth, stateless_client
from tests.support.postgres import install_triggers
from tests.support.server import Server, every_worker_listening, statuses
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx


@pytest.fixture
def better_auth(node_modules: Path, database: str) -> Iterator[BetterAuth]:
    peer = BetterAuth(database)
    yield peer
    peer.stop()


def set_cookie_pair(response: httpx.Response) -> tuple[str, str]:
    """The session cookie's name and wire value from a Set-Cookie header."""
    for header in response.headers.get_list("set-cookie"):
        pair = header.split(";", 1)[0]
        name, _, value = pair.partition("=")
        if name.endswith("session_token"):
            return name, value
    raise AssertionError("no session cookie was set")


async def validate(client: httpx.AsyncClient, gw: Server, headers: dict[str, str]) -> httpx.Response:
    return await client.get(gw.url + "/validate", headers=headers)


async def test_real_better_auth_sessions_validate(
    better_auth: BetterAuth,
    database: str,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    """Every credential form Better Auth hands out validates and forgeries don't.

    A sign-out is honoured by every worker within 100 ms of its reply, and for good (2 workers,
    Redis, the triggers installed).
    """
    await install_triggers(database)
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    gw = start_gateway(env, workers=2)
    await eventually(lambda: every_worker_listening(gw.url), within=10)
    signup = await better_auth.sign_up(ba_client, "ada@example.com")
    user_id, token = signup.json()["user"]["id"], signup.json()["token"]
    name, wire = set_cookie_pair(signup)
    assert name == "better-auth.session_token"
    signed = signup.headers["set-auth-token"]
    accepted = {
        "cookie": {"cookie": f"{name}={wire}"},
        "set-auth-token": {"authorization": f"Bearer {signed}"},
        "raw token": {"authorization": f"Bearer {token}"},
    }
    for form, headers in accepted.items():
        r = await validate(ba_client, gw, headers)
        assert r.status_code == 200, form
        assert r.headers["x-auth-request-user"] == user_id, form
        assert r.headers["x-auth-request-email"] == "ada@example.com", form
    tampered = wire[:-6] + ("A" if wire[-6] != "A" else "B") + wire[-5:]
    refused = {
        "tampered signature": {"cookie": f"{name}={tampered}"},
        "__Secure- name on http": {"cookie": f"__Secure-{name}={wire}"},  # Better Auth reads one name
        "wrong token": {"authorization": "Bearer " + "x" * 32},
        "no credential": {},
    }
    for form, headers in refused.items():
        assert (await validate(ba_client, gw, headers)).status_code == 401, form

    assert await statuses(gw.url, accepted["cookie"]) == {200}  # warm on every worker
    out = await ba_client.post(
        better_auth.url + "/api/auth/sign-out", headers={"cookie": f"{name}={wire}", "origin": better_auth.origin}
    )
    replied = time.monotonic()
    assert out.status_code == 200
    await asyncio.sleep(max(0.0, replied + 0.1 - time.monotonic()))
    for form, headers in accepted.items():
        assert await statuses(gw.url, headers, n=8) == {401}, form
    await asyncio.sleep(0.5)
    assert await statuses(gw.url, accepted["cookie"]) == {401}  # and never again


async def test_get_session_equals_better_auths(
    better_auth: BetterAuth, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """The gateway's get-session answer equals Better Auth's own for the same cookie, and for none."""
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_PLUGINS": "bearer,admin"})  # the peer's plugins
    signup = await better_auth.sign_up(ba_client, "grace@example.com")
    name, wire = set_cookie_pair(signup)
    for headers in ({"cookie": f"{name}={wire}"}, {"authorization": f"Bearer {signup.headers['set-auth-token']}"}, {}):
        ours = await ba_client.get(gw.url + "/api/auth/get-session", headers=headers)
        theirs = await ba_client.get(better_auth.url + "/api/auth/get-session", headers=headers)
        assert ours.status_code == theirs.status_code == 200
        assert ours.json() == theirs.json(), headers
        assert ours.headers["cache-control"] == theirs.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_exactly_the_cookie_name_better_auth_reads(
    scheme: str, node_modules: Path, database: str, start_gateway: Any
) -> None:
    """Better Auth reads ``__Secure-<name>`` on an https base URL, ``<name>`` on http, never both: so does the gateway.

    On https, a valid cookie under the plain name (one a sibling subdomain or plain http can
    set) signs nobody in: Better Auth answers null, the gateway 401.
    """
    peer = BetterAuth(database, base_url_scheme=scheme)
    try:
        env = {"GATEWAY_SECURE_COOKIES": "auto", "BETTER_AUTH_URL": peer.origin, "GATEWAY_PLUGINS": "bearer,admin"}
        gw = start_gateway({"DATABASE_URL": database} | env)  # the peer's base URL and plugins
        async with stateless_client() as client:
            signup = await peer.sign_up(client, f"{scheme}@example.com")
            name, wire = set_cookie_pair(signup)
            plain = "better-auth.session_token"
            assert name == ("__Secure-" + plain if scheme == "https" else plain)
            other = plain if scheme == "https" else "__Secure-" + plain
            for cookie_name, accepted in ((name, True), (other, False)):
                headers = {"cookie": f"{cookie_name}={wire}"}
                theirs = await client.get(peer.url + "/api/auth/get-session", headers=headers)
                assert (theirs.json() is not None) == accepted, cookie_name
                ours = await client.get(gw.url + "/api/auth/get-session", headers=headers)
                assert ours.json() == theirs.json(), cookie_name
                r = await client.get(gw.url + "/validate", headers=headers)
                assert r.status_code == (200 if accepted else 401), cookie_name
                if accepted:
                    assert r.headers["x-auth-request-email"] == f"{scheme}@example.com"
    finally:
        peer.stop()


async def written_by_the_user(
    database: str,
    client: httpx.AsyncClient,
    field: str,
    kind: str,
    body: str,
    *,
    column: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[dict[str, str], httpx.Response]:
    """A real Better Auth with one additional user field (``column``: its type changed to that, as
    Better Auth also accepts); a user signs up and writes ``body`` through update-user. Their session
    cookie and Better Auth's own get-session answer, after it (asserted 200)."""
    options = {"user": {"additionalFields": {field: {"type": kind, "required": False}}}}
    peer = BetterAuth(database, env={"PLUGINS": "", "OPTIONS": json.dumps(options)} | (env or {}))
    try:
        signed_up = await peer.sign_up(client, f"{field.lower()}@example.com")
        if column is not None:
            conn = await asyncpg.connect(database)
            try:
                await conn.execute(f'alter table "user" alter column {field} type {column}')
            finally:
                await conn.close()
        session_cookie = {"cookie": signed_up.headers["set-cookie"].split(";", 1)[0]}
        update = await client.post(
            peer.url + "/api/auth/update-user",
            content=body,
            headers=session_cookie | {"origin": peer.origin, "content-type": "application/json"},
        )
        assert update.status_code == 200, update.text
        theirs = await client.get(peer.url + "/api/auth/get-session", headers=session_cookie)
        assert theirs.status_code == 200
        return session_cookie, theirs
    finally:
        peer.stop()


@pytest.mark.parametrize(
    ("field", "kind", "value"),
    [
        ("prefs", "json", "DEEP"),
        ("prefs", "json", {"x": 1e29, "y": [9007199254740993, 0.1]}),
        ("birthday", "date", "10000-01-01"),
    ],
    ids=["json 1,500 deep", "json 1e29", "date in year 10000"],
)
async def test_what_a_user_writes_through_better_auth_is_answered_as_better_auth_does(
    field: str,
    kind: str,
    value: object,
    node_modules: Path,
    database: str,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    """Red team 13, end to end: a user sets their own additional field with Better Auth's update-user.

    Better Auth's get-session then answers 200 with the field; the gateway (configured to answer
    that field) answered 500 with a traceback (a decoder's recursion limit, asyncpg's year-9999
    limit, msgpack's 2**64). It now answers what Better Auth answers, from Postgres and from Redis.
    """
    body = json.dumps({field: value}).replace('"DEEP"', "[" * 1500 + "]" * 1500)
    session_cookie, theirs = await written_by_the_user(database, ba_client, field, kind, body)
    assert f'"{field}":' in theirs.text  # as text: Python's json would not read 1,500 levels
    assert f'"{field}":null' not in theirs.text
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_USER_ADDITIONAL_FIELDS": field,
        "GATEWAY_LISTEN": "false",  # no startup flush racing the first lookup's Redis write
    }
    server = start_gateway(env)
    for _ in range(3):  # from Postgres, then from the cache
        ours = await ba_client.get(server.url + "/api/auth/get-session", headers=session_cookie)
        assert ours.status_code == 200, f"Better Auth answers 200, the gateway {ours.status_code}"
        if value == "DEEP":
            assert ours.text.count("[") == theirs.text.count("[") == 1500
        else:
            assert ours.json()["user"][field] == theirs.json()["user"][field]
    assert "Traceback" not in server.output()


async def test_a_lone_surrogate_in_a_json_column_is_answered_as_better_auth_does(
    node_modules: Path,
    database: str,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    """Red team, round 2, finding 4: a ``json`` field (Better Auth accepts a ``json`` column as well
    as ``jsonb`` for it) keeps ``"\\ud800"`` verbatim. The user writes it through update-user;
    Better Auth answers it (200, ``JSON.stringify`` escapes it); ``column_values.decode_json`` made
    it a Python str with a lone surrogate, which no encoder (the JSON answer, Redis's msgpack) can
    write: a 500. It is now kept as its text, answered verbatim, from Postgres every time.
    """
    body = '{"prefs": {"note": "\\ud800"}}'
    session_cookie, theirs = await written_by_the_user(
        database, ba_client, "prefs", "json", body, column="json using prefs::text::json"
    )
    assert '"prefs":{"note":"\\ud800"}' in theirs.text
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_USER_ADDITIONAL_FIELDS": "prefs",
        "GATEWAY_LISTEN": "false",  # no startup flush racing the first lookup's Redis write
    }
    server = start_gateway(env)
    for _ in range(2):
        ours = await ba_client.get(server.url + "/api/auth/get-session", headers=session_cookie)
        assert ours.status_code == 200, f"Better Auth answers 200, the gateway {ours.status_code}"
        assert '"note":"\\ud800"' in ours.text
        v = await ba_client.get(server.url + "/validate", headers=session_cookie)
        assert v.status_code == 200
    assert "Traceback" not in server.output()


async def test_a_date_column_is_answered_as_better_auth_does(
    node_modules: Path, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """Red team, round 2, finding 6: Better Auth accepts a ``date`` column for a ``date`` field
    (``get-migration``'s postgres types: timestamptz, timestamp, date). node-postgres reads a
    ``date`` as a JavaScript ``Date`` at local midnight, so a Better Auth in UTC answers
    ``"2020-01-01T00:00:00.000Z"``; the gateway answered ``"2020-01-01"``."""
    session_cookie, theirs = await written_by_the_user(
        database, ba_client, "birthday", "date", '{"birthday": "2020-01-01"}', column="date", env={"TZ": "UTC"}
    )
    assert theirs.json()["user"]["birthday"] == "2020-01-01T00:00:00.000Z"
    server = start_gateway({"DATABASE_URL": database, "GATEWAY_USER_ADDITIONAL_FIELDS": "birthday"})
    ours = await ba_client.get(server.url + "/api/auth/get-session", headers=session_cookie)
    assert ours.status_code == 200
    assert ours.json()["user"]["birthday"] == theirs.json()["user"]["birthday"]
