"""JWTs of Better Auth's JWT plugin, from the real Better Auth, verified by the gateway.

For each key algorithm the plugin offers, a JWT from ``/api/auth/token`` validates (identity from
its claims); one signed by another key, an expired one, one for another audience and one naming
an unknown key do not. The keys come from the ``jwks`` table, or from ``/api/auth/jwks``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.core.sessions import Reason
from gateway.credentials.jwts import JwtVerifier
from gateway.postgres import seed
from tests.support.better_auth import BetterAuth
from tests.support.credentials import cookie
from tests.support.ports import free_port
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    import httpx

    from tests.support.server import Server


def other_key(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("alg", "source"), [("EdDSA", "table"), ("EdDSA", "url"), ("ES256", "table"), ("RS256", "table"), ("PS256", "url")]
)
async def test_jwt_plugin_tokens(
    alg: str,
    source: str,
    node_modules: Path,
    database: str,
    bare_db: asyncpg.Connection,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    plugins = {"bearer": {}, "jwt": {"jwks": {"keyPairConfig": {"alg": alg}, "disablePrivateKeyEncryption": True}}}
    peer = BetterAuth(database, env={"PLUGINS": json.dumps(plugins)})
    try:
        env = {"DATABASE_URL": database, "GATEWAY_JWT_AUDIENCE": peer.origin, "GATEWAY_JWT_ISSUER": peer.origin}
        if source == "url":
            env["GATEWAY_JWT_JWKS_URL"] = peer.url + "/api/auth/jwks"
        gw = start_gateway(env)
        signup = await peer.sign_up(ba_client, "ada@example.com")
        user = signup.json()["user"]
        cookie = {"cookie": signup.headers["set-cookie"].split(";", 1)[0]}
        issued = await ba_client.get(peer.url + "/api/auth/token", headers=cookie)
        assert issued.status_code == 200
        token = issued.json()["token"]
        assert jwt.get_unverified_header(token)["alg"] == alg

        # Valid: the identity comes from the claims (the gateway knew no key before: a refetch).
        r = await ba_client.get(gw.url + "/validate", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.headers["x-auth-request-user"] == user["id"]
        assert r.headers["x-auth-request-email"] == "ada@example.com"
        body = (await ba_client.post(gw.url + "/v1/validate", json={"token": token})).json()
        assert body["user"]["id"] == user["id"]
        assert body["user"]["email"] == "ada@example.com"
        assert body["session"] is None
        # Better Auth's get-session takes no JWT: neither does the gateway's.
        for url in (gw.url, peer.url):
            got = await ba_client.get(url + "/api/auth/get-session", headers={"authorization": f"Bearer {token}"})
            assert got.json() is None

        # Forgeries, made with the plugin's own private key (stored unencrypted here) or another.
        kid, private = await bare_db.fetchrow('SELECT "id", "privateKey" FROM "jwks"')
        real = jwt.PyJWK(json.loads(private), algorithm=alg).key
        claims = jwt.decode(token, options={"verify_signature": False})
        now = int(time.time())

        def signed(changes: dict[str, Any], key: Any = real, key_id: str = kid) -> str:
            return jwt.encode(claims | changes, key, algorithm=alg, headers={"kid": key_id})

        forged = {
            "another key": signed({}, other_key(alg)),
            "expired": signed({"iat": now - 3600, "exp": now - 60}),
            "another audience": signed({"aud": "https://other.example"}),
            "another issuer": signed({"iss": "https://other.example"}),
            "unknown kid": signed({}, key_id="not-a-key"),
            "tampered claims": token.split(".")[0] + "." + _swap_sub(token) + "." + token.split(".")[2],
        }
        r = await ba_client.get(gw.url + "/validate", headers={"authorization": f"Bearer {signed({})}"})
        assert r.status_code == 200  # the forger's tools are sound: the real key and claims pass
        reasons = {"expired": "expired", "another audience": "invalid_jwt", "another issuer": "invalid_jwt"}
        for case, value in forged.items():
            r = await ba_client.get(gw.url + "/validate", headers={"authorization": f"Bearer {value}"})
            assert r.status_code == 401, case
            assert r.headers["x-auth-reason"] == reasons.get(case, "bad_signature"), case
    finally:
        peer.stop()


@pytest.mark.parametrize(
    "explicit",
    [{"GATEWAY_JWT_AUDIENCE": "{origin}"}, {"GATEWAY_JWT_JWKS_URL": "{url}/api/auth/jwks"}],
    ids=["audience set, issuer by default", "both by default (the JWKS URL asks for JWTs)"],
)
async def test_issuer_and_audience_default_to_the_base_urls_origin(
    explicit: dict[str, str],
    node_modules: Path,
    database: str,
    bare_db: asyncpg.Connection,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    """Better Auth's ``verifyJWT`` checks ``iss`` and ``aud`` against its base URL's origin by default: as the gateway.

    The gateway checked no issuer unless ``GATEWAY_JWT_ISSUER`` was set: a JWT naming another issuer
    (signed with a key the gateway trusts) was accepted where Better Auth refuses it.
    """
    plugins = {"jwt": {"jwks": {"keyPairConfig": {"alg": "EdDSA"}, "disablePrivateKeyEncryption": True}}}
    peer = BetterAuth(database, env={"PLUGINS": json.dumps(plugins)})
    try:
        # The base URL as an operator may write it (a path, a trailing slash): its origin counts.
        env = {"DATABASE_URL": database, "BETTER_AUTH_URL": peer.origin + "/api/auth/"}
        env |= {k: v.format(origin=peer.origin, url=peer.url) for k, v in explicit.items()}
        gw = start_gateway(env)
        signup = await peer.sign_up(ba_client, "iss@example.com")
        cookie = {"cookie": signup.headers["set-cookie"].split(";", 1)[0]}
        token = (await ba_client.get(peer.url + "/api/auth/token", headers=cookie)).json()["token"]
        kid, private = await bare_db.fetchrow('SELECT "id", "privateKey" FROM "jwks"')
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["iss"], claims["aud"]) == (peer.origin, peer.origin)  # Better Auth's defaults
        key = jwt.PyJWK(json.loads(private)).key

        def signed(changes: dict[str, Any]) -> str:
            return jwt.encode(claims | changes, key, algorithm="EdDSA", headers={"kid": kid})

        cases = {"genuine": (token, 200), "same claims": (signed({}), 200)}
        cases |= {"another issuer": (signed({"iss": "https://other.example"}), 401)}
        cases |= {"another audience": (signed({"aud": "https://other.example"}), 401)}
        for case, (value, status) in cases.items():
            r = await ba_client.get(gw.url + "/validate", headers={"authorization": f"Bearer {value}"})
            assert r.status_code == status, case
            assert status == 200 or r.headers["x-auth-reason"] == "invalid_jwt", case
    finally:
        peer.stop()


def _swap_sub(token: str) -> str:
    import base64  # noqa: PLC0415

    claims = jwt.decode(token, options={"verify_signature": False}) | {"sub": "someone-else", "id": "someone-else"}
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


async def test_unknown_kids_cannot_force_a_fetch_each() -> None:
    """Forged kids trigger at most one key fetch per interval, however many arrive."""
    fetches = 0

    async def source() -> list[dict[str, Any]]:
        nonlocal fetches
        fetches += 1
        return []

    verifier = JwtVerifier(source, audience="https://app.example", refetch_s=30.0)
    key = ed25519.Ed25519PrivateKey.generate()
    for i in range(50):
        forged = jwt.encode(
            {"sub": "x", "aud": "https://app.example", "exp": time.time() + 60}, key, "EdDSA", {"kid": f"k{i}"}
        )
        assert await verifier.verify(forged) is Reason.bad_signature
    assert fetches == 1


async def test_unusable_keys_and_sources_are_skipped_not_fatal() -> None:
    """A malformed key beside a good one is ignored; a source that fails keeps the keys already known."""
    key = ed25519.Ed25519PrivateKey.generate()
    good = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "good", "alg": "EdDSA"}
    answers: list[list[dict[str, Any]] | OSError] = [
        [{"kty": "OKP", "crv": "Ed25519", "x": "!!", "kid": "bad"}, good],
        OSError("down"),
    ]

    async def source() -> list[dict[str, Any]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    verifier = JwtVerifier(source, audience="https://app.example", refetch_s=0.0)
    claims = {"sub": "u1", "aud": "https://app.example", "exp": time.time() + 60}
    token = jwt.encode(claims, key, "EdDSA", {"kid": "good"})
    session = await verifier.verify(token)
    assert not isinstance(session, Reason)
    assert session.user_id == "u1"
    # The next unknown kid refetches, the source fails: the good key stays, and the unknown kid
    # cannot be judged while the source is down (503, not 401).
    assert await verifier.verify(jwt.encode(claims, key, "EdDSA", {"kid": "other"})) is Reason.backend_unavailable
    assert await verifier.verify(token) is not Reason.bad_signature


async def test_claims_are_checked_as_jose_checks_them() -> None:
    """iat is not checked (a clock ahead of ours is no reason to refuse); exp, nbf and iat must be numbers."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "k", "alg": "EdDSA"}

    async def source() -> list[dict[str, Any]]:
        return [public]

    verifier = JwtVerifier(source, audience="https://app.example")
    now = int(time.time())
    claims = {"sub": "u1", "aud": "https://app.example", "iat": now, "exp": now + 60}

    def signed(changes: dict[str, Any]) -> str:
        return jwt.encode(claims | changes, key, "EdDSA", {"kid": "k"})

    assert not isinstance(await verifier.verify(signed({"iat": now + 5})), Reason)
    for changes in ({"exp": str(now + 60)}, {"nbf": str(now - 5)}, {"iat": str(now)}):
        assert await verifier.verify(signed(changes)) is Reason.invalid_jwt, changes
    assert isinstance(await verifier.verify(signed({"exp": True})), Reason)


async def test_keys_never_loaded_is_unavailable_then_recovers() -> None:
    """No key could ever be read: every JWT is backend_unavailable; once a fetch succeeds, a known kid
    verifies and an unknown one is a bad signature; failures are retried after retry_s, not refetch_s."""
    key = ed25519.Ed25519PrivateKey.generate()
    good = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "good", "alg": "EdDSA"}
    now = [0.0]
    up = [False]
    fetches = 0

    async def source() -> list[dict[str, Any]]:
        nonlocal fetches
        fetches += 1
        if not up[0]:
            raise OSError("connection refused")
        return [good]

    verifier = JwtVerifier(source, audience="https://app.example", refetch_s=30.0, retry_s=1.0, clock=lambda: now[0])
    claims = {"sub": "u1", "aud": "https://app.example", "exp": time.time() + 60}
    token = jwt.encode(claims, key, "EdDSA", {"kid": "good"})
    forged = jwt.encode(claims, key, "EdDSA", {"kid": "made-up"})
    for _ in range(20):  # however many arrive: one fetch per retry interval
        assert await verifier.verify(token) is Reason.backend_unavailable
        assert await verifier.verify(forged) is Reason.backend_unavailable
    assert fetches == 1
    up[0] = True
    now[0] += 1.0
    assert not isinstance(await verifier.verify(token), Reason)
    assert await verifier.verify(forged) is Reason.bad_signature  # keys are current: a forgery
    assert fetches == 2
    # A rotation while the source is down: the new kid cannot be judged, the old one still verifies.
    up[0] = False
    now[0] += 30.0
    rotated = jwt.encode(claims, key, "EdDSA", {"kid": "rotated"})
    assert await verifier.verify(rotated) is Reason.backend_unavailable
    assert not isinstance(await verifier.verify(token), Reason)
    assert fetches == 3


def _jwk(key: ed25519.Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    public: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    return public | {"kid": kid, "alg": "EdDSA"}


AUDIENCE = "https://app.example"


def _jwt(key: ed25519.Ed25519PrivateKey, kid: str, user_id: str = "u1") -> dict[str, str]:
    claims = {"sub": user_id, "id": user_id, "email": "ada@example.com", "aud": AUDIENCE, "exp": time.time() + 300}
    return {"authorization": "Bearer " + jwt.encode(claims, key, "EdDSA", {"kid": kid})}


async def _answers(client: httpx.AsyncClient, gw: Server, headers: dict[str, str]) -> tuple[int, int]:
    """The status of /validate and of /v1/validate for the same JWT."""
    a = await client.get(gw.url + "/validate", headers=headers)
    b = await client.post(gw.url + "/v1/validate", headers=headers)
    if a.status_code == 503:
        assert a.headers["retry-after"]
    if b.status_code == 503:  # (the two are asked one after the other: a fetch may end between them)
        assert b.json() == {"error": "unavailable", "reason": "backend_unavailable"}
    return a.status_code, b.status_code


async def test_jwks_table_unreachable_is_503_not_401(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Postgres gone (the link to it cut): a JWT whose key the gateway cannot read is 503 on /validate and
    /v1/validate, never 401 (and a cookie on get-session is 503 too); known keys keep verifying; once
    Postgres is back, JWTs pass and a made-up kid is a bad signature again."""
    await db.execute(
        'CREATE TABLE "jwks" ("id" text PRIMARY KEY, "publicKey" text NOT NULL, "privateKey" text NOT NULL, '
        '"createdAt" timestamptz NOT NULL, "alg" text, "crv" text)'
    )
    first = ed25519.Ed25519PrivateKey.generate()

    async def add_key(key: ed25519.Ed25519PrivateKey, kid: str) -> None:
        public = {k: v for k, v in _jwk(key, kid).items() if k not in ("kid", "alg")}
        await db.execute(
            "INSERT INTO \"jwks\" VALUES ($1, $2, 'unused', now(), 'EdDSA', 'Ed25519')", kid, json.dumps(public)
        )

    await add_key(first, "k1")
    uid = await seed.create_user(db, email="ada@example.com")
    token = await seed.create_session(db, uid)
    proxy = await Proxy(database).start()
    try:
        env = {"DATABASE_URL": proxy.dsn(), "GATEWAY_JWT_AUDIENCE": AUDIENCE, "GATEWAY_DB_TIMEOUT_S": "0.5"}
        gw = start_gateway(env | {"GATEWAY_LISTEN": "false", "GATEWAY_STARTUP_WAIT_S": "0"})
        proxy.cut()  # before the gateway could read a single key
        assert await _answers(client, gw, _jwt(first, "k1")) == (503, 503)
        assert await _answers(client, gw, _jwt(first, "made-up")) == (503, 503)
        r = await client.get(gw.url + "/api/auth/get-session", headers=cookie(token))
        assert r.status_code == 503
        proxy.restore()
        await eventually(lambda: _is(client, gw, _jwt(first, "k1"), (200, 200)), within=5)
        assert await _answers(client, gw, _jwt(first, "made-up")) == (401, 401)
        proxy.cut()
        assert await _answers(client, gw, _jwt(first, "k1")) == (200, 200)  # known keys keep verifying
    finally:
        await proxy.close()


async def test_jwks_url_down_is_503_not_401(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Better Auth's /jwks refusing connections or answering 500: 503, never 401; back up, JWTs pass."""
    key = ed25519.Ed25519PrivateKey.generate()
    jwks = JwksServer(free_port())
    url = f"http://127.0.0.1:{jwks.port}/api/auth/jwks"
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_JWT_AUDIENCE": AUDIENCE, "GATEWAY_JWT_JWKS_URL": url})
    try:
        assert await _answers(client, gw, _jwt(key, "k1")) == (503, 503)  # nothing listens there yet
        jwks.keys, jwks.status = [_jwk(key, "k1")], 500
        jwks.start()
        await asyncio.sleep(1.1)  # past the retry interval: the next JWT fetches, and gets a 500
        assert await _answers(client, gw, _jwt(key, "k1")) == (503, 503)
        jwks.status = 200
        await eventually(lambda: _is(client, gw, _jwt(key, "k1"), (200, 200)), within=5)
        assert await _answers(client, gw, _jwt(key, "made-up")) == (401, 401)
        jwks.stop()
        assert await _answers(client, gw, _jwt(key, "k1")) == (200, 200)  # known keys keep verifying
    finally:
        jwks.stop()


async def _is(client: httpx.AsyncClient, gw: Server, headers: dict[str, str], expected: tuple[int, int]) -> bool:
    return await _answers(client, gw, headers) == expected


class JwksServer:
    """A real HTTP server answering ``GET /api/auth/jwks`` the way Better Auth does, or failing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"keys": owner.keys} if owner.status == 200 else {"error": "down"}).encode()
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                """Quiet."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
