"""Secondary-storage mode: Better Auth keeps its sessions only in Redis, and the gateway reads them there.

The real Better Auth runs with ``@better-auth/redis-storage`` (its default ``better-auth:`` key
prefix, or none) on a Redis of the test's own; the gateway has no Postgres at all. Sessions
Better Auth creates validate, with the same get-session answer; those it signs out or revokes in
bulk (``revoked-sessions-before-<userId>``) stop validating, at once with keyspace
notifications on and within a second without them.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as redis

from tests.better_auth_peer import BetterAuth, ba_client, node_modules
from tests.conftest import RedisServer, statuses

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

__all__ = ["ba_client", "node_modules"]  # fixtures, used by name


@pytest.mark.parametrize(
    ("prefix", "notifications"),
    [("better-auth:", True), ("", True), ("better-auth:", False)],
    ids=["better-auth: prefix", "no prefix", "notifications off"],
)
async def test_sessions_in_better_auths_redis(
    prefix: str,
    notifications: bool,
    node_modules: Path,
    database: str,
    tmp_path: Path,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    server = RedisServer(tmp_path, *(["--notify-keyspace-events", "KEA"] if notifications else []))
    peer, store = None, None
    try:
        peer = BetterAuth(
            database,
            env={"PLUGINS": "", "SECONDARY_STORAGE": server.url, "SECONDARY_STORAGE_PREFIX": json.dumps(prefix)},
        )
        env = {"GATEWAY_SECONDARY_STORAGE_URL": server.url, "GATEWAY_SECONDARY_STORAGE_PREFIX": prefix}
        gw = start_gateway(env, workers=2)
        store = redis.Redis.from_url(server.url)
        # With notifications every worker evicts at once; without them the LRU keeps a session 1 s at most.
        within = 0.1 if notifications else 1.2

        async def agree(headers: dict[str, str], *, valid: bool) -> None:
            ours = await ba_client.get(gw.url + "/api/auth/get-session", headers=headers)
            theirs = await ba_client.get(peer.url + "/api/auth/get-session", headers=headers)
            assert (theirs.json() is not None) == valid, theirs.text
            assert ours.json() == theirs.json()

        async def refused(headers: dict[str, str]) -> bool:
            return await statuses(gw.url, headers, n=8) == {401}

        ada = await peer.sign_up(ba_client, "ada@example.com")
        ada_cookie = {"cookie": ada.headers["set-cookie"].split(";", 1)[0]}
        token = ada.json()["token"]
        assert await store.get(prefix + token) is not None  # Better Auth wrote it there, as expected
        await agree(ada_cookie, valid=True)
        assert await statuses(gw.url, ada_cookie) == {200}  # and now it is in every worker's LRU

        out = await ba_client.post(peer.url + "/api/auth/sign-out", headers=ada_cookie | {"origin": peer.origin})
        assert out.status_code == 200
        await asyncio.sleep(within)
        assert await refused(ada_cookie)
        await agree(ada_cookie, valid=False)

        # Bulk revocation: Better Auth writes revoked-sessions-before-<userId>, then deletes the keys.
        bob = await peer.sign_up(ba_client, "bob@example.com")
        bob_cookie = {"cookie": bob.headers["set-cookie"].split(";", 1)[0]}
        bob_key = prefix + bob.json()["token"]
        stale = await store.get(bob_key)
        assert await statuses(gw.url, bob_cookie) == {200}
        r = await ba_client.post(peer.url + "/api/auth/revoke-sessions", headers=bob_cookie | {"origin": peer.origin})
        assert r.status_code == 200
        await asyncio.sleep(within)
        assert await refused(bob_cookie)
        # A copy of the revoked session written back (a lagging replica, a race) is still refused:
        # it was created before the user's revocation time, for Better Auth and for the gateway.
        assert stale is not None
        await store.set(bob_key, stale, ex=600)
        await agree(bob_cookie, valid=False)
        assert await refused(bob_cookie)
    finally:
        if store is not None:
            await store.aclose()
        if peer is not None:
            peer.stop()
        server.kill()
