"""Secondary-storage mode: Better Auth keeps its sessions only in Redis, and the gateway reads them there.

The real Better Auth runs with ``@better-auth/redis-storage`` (its default ``better-auth:`` key
prefix, or none) on a Redis of the test's own; the gateway has no Postgres at all. Sessions
Better Auth creates validate, with the same get-session answer; those it signs out or revokes in
bulk (``revoked-sessions-before-<userId>``) stop validating, at once with keyspace
notifications on and within a second without them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as redis

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support.better_auth import BetterAuth
from tests.support.credentials import SECRET, cookie
from tests.support.redis import RedisServer
from tests.support.server import statuses

if TYPE_CHECKING:
    from pathlib import Path

    import httpx


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


async def test_stored_fields_better_auth_does_not_return_are_never_sent(
    redis_url: str, redis_prefix: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A stored session carrying keys Better Auth's configuration does not declare (another writer's,
    an older configuration's plugin fields): get-session and /v1/validate answer the declared ones only;
    the role still decides, and is returned once its plugin is named."""
    token = "t" * 32
    now = dt.datetime.now(dt.UTC)
    iso = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    later = (now + dt.timedelta(hours=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    session = {"id": "s1", "token": token, "userId": "u1", "expiresAt": later, "createdAt": iso, "updatedAt": iso}
    session |= {"ipAddress": "", "userAgent": "", "deviceSecret": "secret-session-value", "activeOrganizationId": "o"}
    user = {"id": "u1", "name": "Ada", "email": "ada@example.com", "emailVerified": True, "image": None}
    user |= {"createdAt": iso, "updatedAt": iso, "ssn": "secret-user-value", "role": "admin", "banned": False}
    store = redis.Redis.from_url(redis_url)
    await store.set(redis_prefix + token, json.dumps({"session": session, "user": user}), ex=60)
    await store.aclose()
    env = {"GATEWAY_SECONDARY_STORAGE_URL": redis_url, "GATEWAY_SECONDARY_STORAGE_PREFIX": redis_prefix}
    for plugins, role_returned in (("", False), ("admin", True)):
        gw = start_gateway(env | ({"GATEWAY_PLUGINS": plugins} if plugins else {}))
        ours = await client.get(gw.url + "/api/auth/get-session", headers=cookie(token))
        assert ours.json()["session"] == {
            k: v for k, v in session.items() if k not in ("deviceSecret", "activeOrganizationId")
        }
        expected_user = {k: v for k, v in user.items() if k not in ("ssn", "role", "banned")}
        if role_returned:
            expected_user |= {"role": "admin", "banned": False}
        assert ours.json()["user"] == expected_user
        body = (await client.post(gw.url + "/v1/validate", json={"token": token})).json()
        assert body["user"] == expected_user
        assert "deviceSecret" not in body["session"]
        r = await client.get(gw.url + "/validate", headers=cookie(token))
        assert r.headers["x-auth-request-role"] == "admin"
        gw.stop()


async def test_a_deeply_nested_json_field_in_secondary_storage_is_no_500(
    redis_url: str, redis_prefix: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Red team 13: a user-written ``json`` field 3,000 deep, where Better Auth keeps sessions in Redis.

    ``json.loads`` raised ``RecursionError`` (which ``_parse`` did not catch) and failed the whole
    ``MGET`` batch: a 500 and a traceback for the user and every session read with theirs. The
    value is now read field by field, as ``JSON.parse`` reads it, the deep field answered verbatim.
    """
    prefix = redis_prefix + ":ba:"
    later = "2099-01-01T00:00:00.000Z"

    def value(user_id: str, token: str, prefs: object) -> str:
        stamp = "2026-01-01T00:00:00.000Z"
        session: dict[str, object] = {"id": "s" + token[:8], "token": token, "userId": user_id, "expiresAt": later}
        session |= {"createdAt": stamp, "updatedAt": stamp, "ipAddress": None, "userAgent": None}
        user = {"id": user_id, "name": user_id, "email": f"{user_id}@example.com", "emailVerified": True}
        user |= {"image": None, "createdAt": stamp, "updatedAt": stamp, "prefs": prefs}
        return json.dumps({"session": session, "user": user}).replace('"DEEP"', "[" * 3000 + "]" * 3000)

    store = redis.Redis.from_url(redis_url)
    attacker_token = seed.generate_id()
    victim_tokens = [seed.generate_id() for _ in range(60)]
    try:
        await store.set(prefix + attacker_token, value("attacker", attacker_token, "DEEP"))
        for token in victim_tokens:
            await store.set(prefix + token, value("bystander", token, {"theme": "dark"}))
    finally:
        await store.aclose()
    env = {
        "GATEWAY_SECONDARY_STORAGE_URL": redis_url,
        "GATEWAY_SECONDARY_STORAGE_PREFIX": prefix,
        "GATEWAY_USER_ADDITIONAL_FIELDS": "prefs",
    }
    server = start_gateway(env)

    async def validate(token: str) -> int:
        response = await client.post(server.url + "/v1/validate", json={"token": sign(token, SECRET)})
        return int(response.status_code)

    answers = await asyncio.gather(*(validate(t) for v in victim_tokens for t in (attacker_token, v)))
    mine, theirs = answers[0::2], answers[1::2]
    assert set(theirs) == {200}, f"bystanders read in the same MGET: {theirs.count(500)} of {len(theirs)} got 500"
    assert set(mine) == {200}, f"the user's own deep JSON: {sorted(set(mine))}"
    response = await client.post(server.url + "/v1/validate", json={"token": sign(attacker_token, SECRET)})
    assert response.content.count(b"[") == 3000  # the field as stored, verbatim
    assert "Traceback" not in server.output()


async def test_a_json_field_nested_just_under_the_stack_in_secondary_storage_is_no_500(
    redis_url: str, redis_prefix: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Red team: a field ``json.loads`` reads (on a batch's short stack) but a deeper stack can't compare.

    Two sessions of one user: the second's lookup compared the users' dicts (``sharing_user``)
    on the request's stack, and raised ``RecursionError`` for a field about 969 deep: a 500.
    """
    prefix, later, stamp = redis_prefix + ":ba:", "2099-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z"
    store = redis.Redis.from_url(redis_url)
    tokens = []
    try:
        for depth in range(900, 1001, 2):
            user_id = f"deep{depth}"
            user = {"id": user_id, "name": user_id, "email": f"{user_id}@example.com", "emailVerified": True}
            user |= {"createdAt": stamp, "updatedAt": stamp, "prefs": "DEEP"}
            for _ in range(2):
                token = seed.generate_id()
                session = {"id": "s" + token[:8], "token": token, "userId": user_id, "expiresAt": later}
                session |= {"createdAt": stamp, "updatedAt": stamp}
                value = json.dumps({"session": session, "user": user}).replace('"DEEP"', "[" * depth + "]" * depth)
                await store.set(prefix + token, value)
                tokens.append((depth, token))
    finally:
        await store.aclose()
    env = {"GATEWAY_SECONDARY_STORAGE_URL": redis_url, "GATEWAY_SECONDARY_STORAGE_PREFIX": prefix}
    server = start_gateway(env | {"GATEWAY_USER_ADDITIONAL_FIELDS": "prefs"})
    failed = []
    for depth, token in tokens:
        response = await client.post(server.url + "/v1/validate", json={"token": sign(token, SECRET)})
        if response.status_code != 200 or response.content.count(b"[") != depth:
            failed.append((depth, response.status_code))
    assert failed == []
    assert "Traceback" not in server.output()
