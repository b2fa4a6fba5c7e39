"""Hostile API key headers over real sockets: a clear refusal, never a lookup with garbage.

The gateway runs with ``GATEWAY_API_KEYS=on`` on a database that has Better Auth's tables but no
``apikey`` table: any lookup would fail there and answer 503. So every garbage header answered
401 (or Better Auth's 403 for a short key) was refused unread, and the one plausible key's 503
shows the setup would catch a lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.support.postgres import seed_sessions

if TYPE_CHECKING:
    import httpx

    from tests.support.server import Server

PLAUSIBLE = "A" * 64


@pytest.fixture
async def token(database: str) -> str:
    """A live session's raw token (Better Auth's tables seeded; no apikey table)."""
    return (await seed_sessions(database, 1))[0]


@pytest.fixture
async def gateway(database: str, start_gateway: Any, token: str) -> Server:
    assert token
    server: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_API_KEYS": "on", "GATEWAY_LISTEN": "false"})
    return server


GARBAGE: list[tuple[list[tuple[str, Any]], str]] = [
    ([("x-api-key", PLAUSIBLE[:32] + " " + PLAUSIBLE[32:])], "an inner space"),
    ([("x-api-key", PLAUSIBLE[:32].encode() + b"\xc3\xa9" + PLAUSIBLE[32:].encode())], "non-ASCII (UTF-8)"),
    ([("x-api-key", PLAUSIBLE[:32].encode() + b"\xe9" + PLAUSIBLE[32:].encode())], "non-ASCII (Latin-1)"),
    ([("x-api-key", PLAUSIBLE[:32] + "\t" + PLAUSIBLE[32:])], "an inner tab"),
    ([("x-api-key", "A" * 4000)], "oversized"),
    ([("x-api-key", PLAUSIBLE), ("x-api-key", PLAUSIBLE)], "two key headers"),
]


async def test_garbage_keys_get_401_without_a_lookup(gateway: Server, client: httpx.AsyncClient, token: str) -> None:
    """Never passed over either: a valid session beside a garbage key is refused, as Better Auth refuses it."""
    session = ("authorization", f"Bearer {token}")
    assert (await client.get(gateway.url + "/validate", headers=[session])).status_code == 200
    for garbage, why in GARBAGE:
        headers = [*garbage, session]
        for path in ("/validate", "/v1/validate", "/api/auth/get-session"):
            method = "POST" if path == "/v1/validate" else "GET"
            r = await client.request(method, gateway.url + path, headers=headers)
            assert r.status_code == 401, (why, path, r.text)
        r = await client.get(gateway.url + "/api/auth/get-session", headers=headers)
        assert r.json() == {"code": "INVALID_API_KEY", "message": "Invalid API key."}, why
        r = await client.get(gateway.url + "/validate", headers=headers)
        assert r.headers["x-auth-reason"] == "malformed", why


async def test_a_short_key_gets_better_auths_403_and_an_empty_one_counts_as_none(
    gateway: Server, client: httpx.AsyncClient
) -> None:
    short = {"x-api-key": "A" * 63}  # under the plugin's defaultKeyLength
    r = await client.get(gateway.url + "/api/auth/get-session", headers=short)
    assert (r.status_code, r.json()) == (403, {"code": "INVALID_API_KEY", "message": "Invalid API key."})
    assert (await client.get(gateway.url + "/validate", headers=short)).status_code == 401
    r = await client.get(gateway.url + "/validate", headers={"x-api-key": ""})
    assert (r.status_code, r.headers["x-auth-reason"]) == (401, "no_credentials")
    r = await client.get(gateway.url + "/api/auth/get-session", headers={"x-api-key": ""})
    assert (r.status_code, r.content) == (200, b"null")  # no credential: Better Auth's null


async def test_a_plausible_key_is_looked_up(gateway: Server, client: httpx.AsyncClient) -> None:
    """The control: a key that passes the checks reaches Postgres (whose missing table makes it a 503)."""
    r = await client.get(gateway.url + "/validate", headers={"x-api-key": PLAUSIBLE})
    assert r.status_code == 503


async def test_a_valid_key_on_validate_with_sliding_everywhere(database: str, start_gateway: Any) -> None:
    """Red team: with GATEWAY_SESSION_REFRESH=all, a key's mock session (always due) went to the session slide.

    A key the session verifier reads as an unsigned token (32 letters: ``defaultKeyLength: 32``)
    made the slide's proof fail with a KeyError: a 500 for a valid key on /validate and /v1/validate.
    A key is no session: it is never slid, and answered 200 as Better Auth answers it.
    """
    from tests.postgres.test_api_keys import make_key, schema  # noqa: PLC0415  (its table and row)

    db, user = await schema(database)
    try:
        key = "K" * 32
        await make_key(db, user, key)
    finally:
        await db.close()
    env = {
        "DATABASE_URL": database,
        "GATEWAY_API_KEYS": "on",
        "GATEWAY_API_KEY_MIN_LENGTH": "32",
        "GATEWAY_SESSION_REFRESH": "all",
        "GATEWAY_LISTEN": "false",
    }
    server: Server = start_gateway(env)
    import httpx  # noqa: PLC0415

    async with httpx.AsyncClient() as client:
        for path in ("/validate", "/v1/validate"):
            method = "POST" if path == "/v1/validate" else "GET"
            r = await client.request(method, server.url + path, headers={"x-api-key": key})
            assert r.status_code == 200, (path, r.text)
            assert "set-auth-token" not in r.headers
