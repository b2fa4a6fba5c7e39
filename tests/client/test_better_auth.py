"""The client's FastAPI glue with sessions the real Better Auth 1.7 hands out; Better Auth's own answer the oracle."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from better_auth_gateway_client import GatewayClient, Identity
from better_auth_gateway_client.asgi import GatewayMiddleware
from better_auth_gateway_client.fastapi import CurrentIdentity  # noqa: TC002  (FastAPI reads annotations at run time)
from better_auth_gateway_client.identity import decode_identity
from fastapi import FastAPI

from tests.support.better_auth import BetterAuth
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.server import Server


@pytest.fixture
def better_auth(node_modules: Path, database: str) -> Iterator[BetterAuth]:
    peer = BetterAuth(database)  # bearer and admin plugins; it migrates the database as it starts
    yield peer
    peer.stop()


def service(gateway: GatewayClient, seen: list[Identity]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GatewayMiddleware, gateway=gateway)

    @app.get("/me")
    async def me(identity: CurrentIdentity) -> dict[str, str]:
        seen.append(identity)
        return {"id": identity.user.id}

    return app


async def test_better_auth_sessions_through_the_service(
    better_auth: BetterAuth, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """Cookie and set-auth-token give the identity Better Auth's get-session gives; after its sign-out, 401."""
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_PLUGINS": "admin"})
    signup = await better_auth.sign_up(ba_client, "grace@example.com")
    cookie = signup.headers["set-cookie"].split(";", 1)[0]
    bearer = {"authorization": f"Bearer {signup.headers['set-auth-token']}"}
    oracle = (await ba_client.get(better_auth.url + "/api/auth/get-session", headers={"cookie": cookie})).json()
    oracle["session"].pop("token")
    expected = decode_identity(json.dumps(oracle).encode())
    seen: list[Identity] = []
    async with GatewayClient(gw.url) as client:
        transport = httpx.ASGITransport(app=service(client, seen))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            assert (await http.get("/me", headers={"cookie": cookie})).json() == {"id": expected.user.id}
            assert (await http.get("/me", headers=bearer)).status_code == 200
            assert seen == [expected, expected]
            assert expected.user.email == "grace@example.com"
            assert expected.user.role == "user"
            signout = await ba_client.post(
                better_auth.url + "/api/auth/sign-out", headers={"cookie": cookie, "origin": better_auth.origin}
            )
            assert signout.status_code == 200

            async def refused() -> bool:
                return (await http.get("/me", headers={"cookie": cookie})).status_code == 401

            await eventually(refused, within=5)
            assert (await http.get("/me", headers=bearer)).status_code == 401
