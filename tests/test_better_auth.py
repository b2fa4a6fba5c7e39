"""The gateway against the real Better Auth 1.7 (npm ``better-auth`` with ``pg``) on one database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.better_auth_peer import BetterAuth, node_modules
from tests.conftest import Server, eventually, every_worker_listening, install_triggers, statuses

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

__all__ = ["node_modules"]  # a fixture, used by name


@pytest.fixture
def better_auth(node_modules: Path, database: str) -> Iterator[BetterAuth]:
    peer = BetterAuth(database)
    yield peer
    peer.stop()


@pytest.fixture
async def ba_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps no cookies: every test states the credential it sends."""
    async with httpx.AsyncClient(timeout=10, cookies=None) as c:
        yield c


def set_cookie_pair(response: httpx.Response) -> tuple[str, str]:
    """The session cookie's name and wire value from a Set-Cookie header."""
    for header in response.headers.get_list("set-cookie"):
        pair = header.split(";", 1)[0]
        name, _, value = pair.partition("=")
        if name.endswith("session_token"):
            return name, value
    raise AssertionError("no session cookie was set")


async def validate(client: httpx.AsyncClient, gw: Server, headers: dict[str, str]) -> httpx.Response:
    client.cookies.clear()
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
        "__Secure- cookie": {"cookie": f"__Secure-{name}={wire}"},
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


async def test_secure_cookies_from_an_https_better_auth(
    node_modules: Path, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """With an https base URL Better Auth sets __Secure- cookies, and the gateway reads them."""
    peer = BetterAuth(database, base_url_scheme="https")
    try:
        gw = start_gateway({"DATABASE_URL": database})
        signup = await peer.sign_up(ba_client, "secure@example.com")
        name, wire = set_cookie_pair(signup)
        assert name == "__Secure-better-auth.session_token"
        r = await validate(ba_client, gw, {"cookie": f"{name}={wire}"})
        assert r.status_code == 200
        assert r.headers["x-auth-request-email"] == "secure@example.com"
    finally:
        peer.stop()
