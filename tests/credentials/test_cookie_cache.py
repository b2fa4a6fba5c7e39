"""The cookie-cache fast path against the real Better Auth, for each of its strategies.

Better Auth (``session.cookieCache``) sets a ``session_data`` cookie next to the session token.
With ``GATEWAY_COOKIE_CACHE`` set to the same strategy the gateway accepts it without a lookup,
exactly when Better Auth would: the proof is a session deleted behind both their backs (no
trigger tells the gateway), which both still accept from a valid cookie and both refuse from a
tampered, foreign-version or missing one.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.credentials.cookie_cache import CookieCache, data_cookie
from tests.support.better_auth import BetterAuth
from tests.support.postgres import install_triggers
from tests.support.server import wait_listening
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    import asyncpg
    import httpx

    from gateway.credentials.cookie_cache import Strategy
    from tests.support.server import Server


DATA = "better-auth.session_data"


def cookies_of(response: httpx.Response) -> dict[str, str]:
    pairs = (h.split(";", 1)[0].partition("=") for h in response.headers.get_list("set-cookie"))
    return {name: value for name, _, value in pairs if value}


def header(cookies: dict[str, str]) -> dict[str, str]:
    return {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


def tamper(value: str) -> str:
    at = len(value) // 2
    return value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]


def lookups(metrics: str, tier: str, result: str = r"\w+") -> float:
    # Prometheus's multiprocess mode writes the labels in alphabetical order.
    pattern = rf'^gateway_cache_lookups_total\{{result="{result}",tier="{tier}"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, metrics, re.MULTILINE))


async def postgres_lookups(client: httpx.AsyncClient, gw: Server) -> float:
    return lookups((await client.get(gw.url + "/metrics")).text, "postgres")


async def cookie_cache_hits(client: httpx.AsyncClient, gw: Server) -> float:
    return lookups((await client.get(gw.url + "/metrics")).text, "cookie_cache", "hit")


async def _more(count: Awaitable[float], than: float) -> bool:
    return await count > than


def cache_options(strategy: str) -> str:
    return json.dumps({"session": {"cookieCache": {"enabled": True, "strategy": strategy, "maxAge": 300}}})


@pytest.mark.parametrize("strategy", ["compact", "jwt", "jwe"])
async def test_cookie_cache_strategies(
    strategy: str,
    node_modules: Path,
    database: str,
    bare_db: asyncpg.Connection,
    start_gateway: Any,
    ba_client: httpx.AsyncClient,
) -> None:
    options = cache_options(strategy)
    peer = BetterAuth(database, env={"OPTIONS": options, "PLUGINS": ""})
    try:
        env = {"DATABASE_URL": database, "GATEWAY_COOKIE_CACHE": strategy, "GATEWAY_METRICS_FLUSH_S": "0.05"}
        env["GATEWAY_INSTALL_TRIGGERS"] = "never"  # what a cookie vouches for, with no revocation heard
        gw = start_gateway(env)
        other_version = start_gateway(env | {"GATEWAY_COOKIE_CACHE_VERSION": "2"})
        # A name long enough to need more than one cookie: Better Auth splits past 4050 bytes.
        big = await ba_client.post(
            peer.url + "/api/auth/sign-up/email",
            json={"email": "long@example.com", "password": "correct-horse-battery-staple", "name": "N" * 6000},
            headers={"origin": peer.origin},
        )
        big.raise_for_status()
        chunked = cookies_of(big)
        assert DATA not in chunked
        assert f"{DATA}.0" in chunked
        assert f"{DATA}.1" in chunked
        signup = await peer.sign_up(ba_client, "ada@example.com")
        cookies = cookies_of(signup)
        assert DATA in cookies

        for jar in (cookies, chunked):
            queries, hits = await postgres_lookups(ba_client, gw), await cookie_cache_hits(ba_client, gw)
            r = await ba_client.get(gw.url + "/validate", headers=header(jar))
            assert r.status_code == 200
            assert r.headers["x-auth-request-email"] in ("ada@example.com", "long@example.com")
            counted = functools.partial(lambda h: _more(cookie_cache_hits(ba_client, gw), h), hits)
            await eventually(counted)  # counted (and flushed)
            assert await postgres_lookups(ba_client, gw) == queries  # no query at all

        # Behind everyone's back (no triggers here): the sessions are gone from the database.
        await bare_db.execute('DELETE FROM "session"')
        tampered = cookies | {DATA: tamper(cookies[DATA])}
        without = {k: v for k, v in cookies.items() if k != DATA}
        # Refusals first: a lookup that found nothing must not hide what the cookie still vouches for.
        cases = {
            "none": (without, False),
            "tampered": (tampered, False),
            "valid": (cookies, True),
            "chunked": (chunked, True),
        }
        for case, (jar, accepted) in cases.items():
            ours = await ba_client.get(gw.url + "/api/auth/get-session", headers=header(jar))
            theirs = await ba_client.get(peer.url + "/api/auth/get-session", headers=header(jar))
            assert (theirs.json() is not None) == accepted, f"{case}: Better Auth said {theirs.text}"
            assert ours.json() == theirs.json(), case
            status = (await ba_client.get(gw.url + "/validate", headers=header(jar))).status_code
            assert status == (200 if accepted else 401), case
        # A cookie cache of another version is not trusted: the lookup finds nothing.
        assert (await ba_client.get(other_version.url + "/validate", headers=header(cookies))).status_code == 401
    finally:
        peer.stop()


async def test_invalidation_shortens_the_cookie_cache_window(
    node_modules: Path, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """A sign-out the gateway hears of is honoured at once, though the cookie would still pass."""
    options = cache_options("compact")
    peer = BetterAuth(database, env={"OPTIONS": options, "PLUGINS": ""})
    try:
        await install_triggers(database)
        gw = start_gateway({"DATABASE_URL": database, "GATEWAY_COOKIE_CACHE": "compact"})
        await wait_listening(ba_client, gw)
        cookies = cookies_of(await peer.sign_up(ba_client, "ada@example.com"))
        assert (await ba_client.get(gw.url + "/validate", headers=header(cookies))).status_code == 200
        out = await ba_client.post(peer.url + "/api/auth/sign-out", headers=header(cookies) | {"origin": peer.origin})
        assert out.status_code == 200

        async def refused() -> bool:
            r = await ba_client.get(gw.url + "/validate", headers=header(cookies))
            return r.status_code == 401

        await eventually(refused, within=1)
    finally:
        peer.stop()


@pytest.mark.parametrize(
    "header",
    [
        "better-auth.session_data.\u00b2=x",  # "²".isdigit(), but int("²") raises
        "better-auth.session_data.\u0663=x",  # an Arabic-Indic digit
        "better-auth.session_data." + "1" * 5000 + "=x",  # more digits than int() reads
    ],
)
def test_chunk_names_that_are_no_numbers_are_ignored(header: str) -> None:
    """A chunk index int() cannot read is no chunk (it was a 500), and Better Auth's own chunks still join."""
    assert data_cookie(header, (DATA,)) is None
    assert data_cookie(f"{header}; {DATA}.1=b; {DATA}.0=a", (DATA,)) == "ab"


def test_a_compact_cookie_with_a_huge_expiry_vouches_for_nothing() -> None:
    """An ``expiresAt`` too big for a float (read before the signature is checked) is refused, not a 500."""
    forged = '{"session":{"session":{},"user":{}},"expiresAt":1' + "0" * 400 + ',"signature":"x"}'
    cache = CookieCache("compact", ("a-secret-long-enough-for-the-gateway-0123456789",))
    assert cache.open(b64url(forged.encode()), "a" * 32) is None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_a_session_appended_to_a_compact_cookie_is_not_believed(
    node_modules: Path, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """Mallory appends a second ``"session"`` (Ada's, as admin) to her own signed compact cookie.

    The signature covers the first; a reader keeping the last would sign her in as Ada. Better
    Auth refuses the cookie cache and answers from the database: Mallory. So does the gateway,
    on every endpoint.
    """
    peer = BetterAuth(database, env={"OPTIONS": cache_options("compact"), "PLUGINS": "admin"})
    try:
        gw = start_gateway({"DATABASE_URL": database, "GATEWAY_COOKIE_CACHE": "compact", "GATEWAY_PLUGINS": "admin"})
        ada = cookies_of(await peer.sign_up(ba_client, "ada@example.com"))
        mallory = cookies_of(await peer.sign_up(ba_client, "mallory@example.com"))
        own = unb64url(mallory[DATA]).decode()
        assert own.startswith('{"session":')
        assert own.endswith("}")
        victim = json.loads(unb64url(ada[DATA]))["session"]  # Ada's payload: {session, user, ...}
        mine = json.loads(own)["session"]
        victim["session"]["token"] = mine["session"]["token"]  # the token Mallory's request proves
        victim["user"]["role"] = "admin"
        forged = own[:-1] + ',"session":' + json.dumps(victim, separators=(",", ":")) + "}"
        attack = header(mallory | {DATA: b64url(forged.encode())})

        theirs = await ba_client.get(peer.url + "/api/auth/get-session", headers=attack)
        assert theirs.json()["user"]["email"] == "mallory@example.com"
        ours = await ba_client.get(gw.url + "/api/auth/get-session", headers=attack)
        assert ours.json() == theirs.json()
        r = await ba_client.get(gw.url + "/validate", headers=attack)
        assert r.status_code == 200
        assert r.headers["x-auth-request-email"] == "mallory@example.com"
        assert r.headers["x-auth-request-role"] != "admin"
        body = (await ba_client.post(gw.url + "/v1/validate", headers=attack)).json()
        assert body["user"]["email"] == "mallory@example.com"
    finally:
        peer.stop()


@pytest.mark.parametrize("strategy", ["compact", "jwt", "jwe"])
@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=300),
        st.builds(lambda t: base64.urlsafe_b64encode(t.encode()).decode().rstrip("="), st.text(max_size=200)),
        st.builds(".".join, st.lists(st.text("eyJA-_.=", max_size=40), min_size=1, max_size=6)),
        st.just(base64.urlsafe_b64encode(b'{"session":' + b"[" * 5000).decode()),
        st.just(base64.urlsafe_b64encode(b'["not", "an object"]').decode() + ".e30.sig"),
    )
)
def test_cookie_cache_never_raises_on_forged_values(strategy: Strategy, value: str) -> None:
    """Whatever a cookie holds, opening it answers: a session only for a real one, else ``None``."""
    cache = CookieCache(strategy, ("a-secret-long-enough-for-the-gateway-0123456789",))
    assert cache.open(value, "a" * 32) is None


# -- Better Auth's reading rules, each found by tests/e2e/test_differential.py ---------------------

_SECRET = "a-secret-long-enough-for-the-gateway-0123456789"
_TOKEN = "t" * 32
_PAYLOAD = {
    "session": {"id": "s1", "token": _TOKEN, "userId": "u1", "expiresAt": "2099-01-01T00:00:00.000Z"},
    "user": {"id": "u1", "email": "ada@example.com", "name": "Ada"},
    "updatedAt": 1,
    "version": "1",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(payload: dict[str, object], *, text: str | None = None, signed_text: str | None = None) -> str:
    """A compact cookie as Better Auth writes it; ``text`` replaces the session's JSON as sent,
    ``signed_text`` the JSON the signature is made over (JSON.stringify's, by default)."""
    expires = 4102444800000
    canonical = json.dumps(payload, separators=(",", ":"))
    signed = (signed_text or canonical)[:-1] + f',"expiresAt":{expires}}}'
    signature = _b64(hmac.digest(_SECRET.encode(), signed.encode(), "sha256"))
    body = f'{{"session":{text or canonical},"expiresAt":{expires},"signature":"{signature}"}}'
    return _b64(body.encode())


def test_compact_is_checked_over_what_is_used() -> None:
    """The compact HMAC covers JSON.stringify of the object used, as Better Auth checks it."""
    cache = CookieCache("compact", (_SECRET,))
    assert cache.open(_compact(_PAYLOAD), _TOKEN) is not None
    pretty = json.dumps(_PAYLOAD, indent=2)
    assert cache.open(_compact(_PAYLOAD, text=pretty), _TOKEN) is not None  # Better Auth accepts it too
    assert cache.open(_compact(_PAYLOAD, text=pretty, signed_text=pretty), _TOKEN) is None
    canonical = json.dumps(_PAYLOAD, separators=(",", ":"))
    victim = json.dumps(_PAYLOAD | {"user": {"id": "victim", "role": "admin"}}, separators=(",", ":"))
    twice = canonical[:-1] + ',"user":' + json.dumps({"id": "victim"}) + "}"
    assert cache.open(_compact(_PAYLOAD, text=twice, signed_text=twice), _TOKEN) is None
    raw = base64.urlsafe_b64decode(_compact(_PAYLOAD) + "==").decode()
    smuggled = raw[:-1] + ',"session":' + victim + "}"  # issue 13 finding 1
    assert cache.open(_b64(smuggled.encode()), _TOKEN) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("d.0=ab; d.1=cd", "abcd"),
        ("d.1=cd; d.0=ab", "abcd"),
        ("d.0=ab; d.01=cd", "ab"),  # not a canonical index
        ("d.0=xx; d.0=ab; d.1=cd", "abcd"),  # Better Auth's chunk parser keeps the last
        ('d.0="ab"; d.1=c%64', "abcd"),
        ("d=; d.0=ab", "ab"),  # an empty whole cookie is absent
        ("d=whole; d.0=ab", "whole"),
        ("d.0=a b", "a b"),
        ("d.0=a,b", "a,b"),
        ("d.0=a\\b; d.1=cd", "cd"),  # outside RFC 6265: skipped
        ("d.x=ab", None),
    ],
)
def test_chunks_are_read_as_better_auth_reads_them(header: str, expected: str | None) -> None:
    """session_data chunks: Better Auth's getChunkedCookie rules."""
    assert data_cookie(header, ("__Secure-d", "d")) == expected


def _jws(claims: dict[str, object]) -> str:
    head = _b64(b'{"alg":"HS256"}') + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(hmac.digest(_SECRET.encode(), head.encode(), "sha256"))


def test_jwt_segments_are_base64url_as_jose_reads_them() -> None:
    """Another alphabet or wrong padding is refused, as jose refuses it; right padding is not."""
    cache = CookieCache("jwt", (_SECRET,))
    value = _jws(_PAYLOAD | {"exp": 4102444800})
    while "-" not in value.rpartition(".")[2] and "_" not in value.rpartition(".")[2]:
        value = _jws(_PAYLOAD | {"exp": 4102444800, "n": value[-3:]})
    assert cache.open(value, _TOKEN) is not None
    head, body, signature = value.split(".")
    standard = signature.replace("-", "+").replace("_", "/")
    assert cache.open(f"{head}.{body}.{standard}", _TOKEN) is None
    assert cache.open(f"{head}.{body}.{signature}====", _TOKEN) is None
    padded = signature + "=" * (-len(signature) % 4)
    assert cache.open(f"{head}.{body}.{padded}", _TOKEN) is not None


def test_a_jwe_window_ends_at_its_exp() -> None:
    """get-session refuses a cache whose exp has passed, whatever jose's decrypt tolerance."""
    now = 1_900_000_000.0
    cache = CookieCache("jwe", (_SECRET,), clock=lambda: now)
    assert cache.open(_jwe(_PAYLOAD | {"exp": int(now) + 5}), _TOKEN) is not None
    assert cache.open(_jwe(_PAYLOAD | {"exp": int(now) - 5}), _TOKEN) is None


def _jwe(claims: dict[str, object]) -> str:
    from cryptography.hazmat.primitives import padding  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    from gateway.credentials.cookie_cache import _jwe_key  # noqa: PLC0415

    key, iv = _jwe_key(_SECRET), bytes(range(16))
    head = _b64(b'{"alg":"dir","enc":"A256CBC-HS512"}')
    padder = padding.PKCS7(128).padder()
    plain = padder.update(json.dumps(claims).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plain) + encryptor.finalize()
    mac = hmac.digest(key[:32], head.encode() + iv + ciphertext + (len(head) * 8).to_bytes(8, "big"), "sha512")
    return ".".join((head, "", _b64(iv), _b64(ciphertext), _b64(mac[:32])))
