"""JWTs of Better Auth's JWT plugin, from the real Better Auth, verified by the gateway.

For each key algorithm the plugin offers, a JWT from ``/api/auth/token`` validates (identity from
its claims); one signed by another key, an expired one, one for another audience and one naming
an unknown key do not. The keys come from the ``jwks`` table, or from ``/api/auth/jwks``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.jwts import JwtVerifier
from gateway.sessions import Reason
from tests.better_auth_peer import BetterAuth, ba_client, node_modules

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    import httpx

__all__ = ["ba_client", "node_modules"]  # fixtures, used by name


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
    answers: list[Any] = [[{"kty": "OKP", "crv": "Ed25519", "x": "!!", "kid": "bad"}, good], OSError("down")]

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
    # The next unknown kid refetches, the source fails: the good key stays.
    assert await verifier.verify(jwt.encode(claims, key, "EdDSA", {"kid": "other"})) is Reason.bad_signature
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
