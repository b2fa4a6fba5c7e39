"""Signed JSON has one reading: a duplicate key anywhere refuses the document, wherever it is signed.

Each forgery below is signed with the real key (as a signer that wrote duplicates would sign
it); the honest twin of each, signed the same way, is accepted, so the refusal is the duplicate's.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.core import strict_json
from gateway.core.sessions import Reason
from gateway.credentials.cookie_cache import CookieCache, _jwe_key
from gateway.credentials.jwts import JwtVerifier
from gateway.http import responses

SECRET = "a-secret-long-enough-for-the-gateway-0123456789"
TOKEN = "T" * 32
NOW = time.time()


def b64url(data: bytes | str) -> str:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def payload_text(user: str) -> str:
    """Better Auth's cookie-cache payload, as JSON text, with ``user`` spliced in verbatim."""
    session = {"id": "s1", "token": TOKEN, "userId": "u1", "expiresAt": "2099-01-01T00:00:00.000Z"}
    return '{"session":' + json.dumps(session, separators=(",", ":")) + ',"user":' + user + ',"updatedAt":1}'


HONEST = '{"id":"u1","email":"mallory@example.com","role":"user"}'
DOUBLED = '{"id":"u1","email":"mallory@example.com","role":"user","role":"admin"}'


def compact(p: str, secret: str = SECRET) -> str:
    """A compact ``session_data`` over payload text ``p``, signed as Better Auth signs it."""
    expires = int(NOW * 1000) + 300_000
    mac = hmac.digest(secret.encode(), (p[:-1] + f',"expiresAt":{expires}}}').encode(), "sha256")
    return b64url('{"session":' + p + f',"expiresAt":{expires},"signature":"{b64url(mac)}"}}')


def jws(claims: str, head: str = '{"alg":"HS256"}', secret: str = SECRET) -> str:
    """A ``jwt`` strategy ``session_data`` over claims text, HS256 with ``secret``."""
    signing = f"{b64url(head)}.{b64url(claims)}"
    return signing + "." + b64url(hmac.digest(secret.encode(), signing.encode(), "sha256"))


def jwe(claims: str, secret: str = SECRET) -> str:
    """A ``jwe`` strategy ``session_data``: claims text encrypted (dir, A256CBC-HS512) with ``secret``'s key."""
    key, iv = _jwe_key(secret), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(claims.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plain) + encryptor.finalize()
    head = b64url('{"alg":"dir","enc":"A256CBC-HS512"}')
    aad = head.encode()
    tag = hmac.digest(key[:32], aad + iv + ciphertext + (len(aad) * 8).to_bytes(8, "big"), "sha512")[:32]
    return f"{head}..{b64url(iv)}.{b64url(ciphertext)}.{b64url(tag)}"


def claims_text(user: str) -> str:
    return payload_text(user)[:-1] + f',"version":"1","iat":{int(NOW)},"exp":{int(NOW) + 300}}}'


def test_duplicate_keys_at_any_depth_are_refused() -> None:
    """Top level, nested and escaped duplicates, NaN and Infinity: refused; plain JSON parses."""
    for text in ('{"a":1,"a":2}', '{"a":{"b":1,"b":1}}', '[{"x":[{"k":1,"\\u006b":2}]}]', '{"n":NaN}', "[Infinity]"):
        with pytest.raises(ValueError, match=r"duplicate|not JSON"):
            strict_json.loads(text)
    assert strict_json.loads(b'{"a":{"b":[1,{"c":null}]},"d":"\\u00e9"}') == {"a": {"b": [1, {"c": None}]}, "d": "é"}
    with pytest.raises(ValueError, match="utf-8"):
        strict_json.loads('{"a":"é"}'.encode("utf-16"))  # json.loads would guess UTF-16


@pytest.mark.parametrize(
    ("strategy", "make"),
    [
        ("compact", lambda user: compact(payload_text(user))),
        ("jwt", lambda user: jws(claims_text(user))),
        ("jwe", lambda user: jwe(claims_text(user))),
    ],
)
def test_a_cookie_cache_with_a_duplicate_key_is_refused(strategy: Any, make: Any) -> None:
    """A session_data signed (or encrypted) over a doubled ``role`` vouches for nothing, in every strategy."""
    cache = CookieCache(strategy, (SECRET,), clock=lambda: NOW)
    honest = cache.open(make(HONEST), TOKEN)
    assert honest is not None
    assert honest.user["role"] == "user"
    assert cache.open(make(DOUBLED), TOKEN) is None


def test_a_jwt_cookie_cache_with_a_doubled_header_is_refused() -> None:
    """A JWS header naming ``alg`` twice is refused before its signature is even looked at."""
    cache = CookieCache("jwt", (SECRET,), clock=lambda: NOW)
    assert cache.open(jws(claims_text(HONEST), '{"alg":"none","alg":"HS256"}'), TOKEN) is None


def signed_jwt(key: ed25519.Ed25519PrivateKey, head: str, claims: str) -> str:
    signing = f"{b64url(head)}.{b64url(claims)}"
    return signing + "." + b64url(key.sign(signing.encode()))


async def test_jwt_plugin_tokens_with_a_duplicate_key_are_refused() -> None:
    """A JWT of the JWT plugin with a doubled claim or header member is refused, signed or not."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "good", "alg": "EdDSA"}

    async def source() -> list[dict[str, Any]]:
        return [public]

    verifier = JwtVerifier(source, audience="https://app.example")
    exp = int(time.time()) + 60
    claims = '{"sub":"u1","aud":"https://app.example","exp":%d,"email":"mallory@example.com"%s}'
    head = '{"alg":"EdDSA","kid":"good"}'
    honest = await verifier.verify(signed_jwt(key, head, claims % (exp, "")))
    assert not isinstance(honest, Reason)
    assert honest.user["email"] == "mallory@example.com"
    doubled_claim = signed_jwt(key, head, claims % (exp, ',"email":"ada@example.com"'))
    assert await verifier.verify(doubled_claim) is Reason.invalid_jwt
    doubled_kid = signed_jwt(key, '{"alg":"EdDSA","kid":"other","kid":"good"}', claims % (exp, ""))
    assert await verifier.verify(doubled_kid) is Reason.malformed


@pytest.mark.parametrize("exp", ["1" + "0" * 400, "1e999"])
async def test_a_signed_jwt_with_an_expiry_no_float_holds_is_refused(exp: str) -> None:
    """An ``exp`` no float holds, even under a real signature: invalid, not a 500 (found by the HTTP fuzz)."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "good", "alg": "EdDSA"}

    async def source() -> list[dict[str, Any]]:
        return [public]

    verifier = JwtVerifier(source, audience="https://app.example")
    claims = f'{{"sub":"u1","aud":"https://app.example","exp":{exp}}}'
    assert await verifier.verify(signed_jwt(key, '{"alg":"EdDSA","kid":"good"}', claims)) is Reason.invalid_jwt


def test_a_lone_surrogate_in_a_signed_answer_is_escaped() -> None:
    """A lone surrogate (JSON holds one, UTF-8 cannot): escaped in answers as JSON.stringify does; headers encode it."""
    cache = CookieCache("jwt", (SECRET,), clock=lambda: NOW)
    session = cache.open(jws(claims_text('{"id":"u1","name":"\\ud800x"}')), TOKEN)
    assert session is not None
    assert session.user["name"] == "\ud800x"
    assert json.loads(responses.identity(session))["user"]["name"] == "\ud800x"
    assert b'"\\ud800x"' in responses.better_auth_session(session, TOKEN)
    assert responses.header_value(session.user["name"]) == "%ED%A0%80x"
