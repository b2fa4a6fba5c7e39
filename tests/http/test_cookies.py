"""The cookies a sliding refresh sets: better-call's format, Better Auth's names and attributes, values it accepts.

``tests/e2e/test_sliding_refresh.py`` compares them with the real Better Auth's.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from gateway.config import load_settings
from gateway.credentials.cookie_cache import CookieCache
from gateway.credentials.tokens import sign
from gateway.http.cookies import Cookies
from tests.support.credentials import SECRET
from tests.support.memory import session

TOKEN = "T" * 32


def cookies(**overrides: object) -> Cookies:
    return Cookies(load_settings({"BETTER_AUTH_SECRET": SECRET}, overrides, need=frozenset({"secret"})))


def test_session_token_as_better_call_writes_it() -> None:
    """Name, encodeURIComponent'd signed value, then Max-Age, Domain, Path, HttpOnly, Secure, SameSite in that order."""
    value = quote(sign(TOKEN, SECRET), safe="")
    plain = cookies(secure_cookies="false").session_token(TOKEN)
    assert plain == f"better-auth.session_token={value}; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax"
    secure = cookies(base_url="https://app.example.com", cookie_domain="example.com", session_expires_in_s=3600)
    assert secure.session_token(TOKEN) == (
        f"__Secure-better-auth.session_token={value}; Max-Age=3600; Domain=example.com; Path=/; HttpOnly; Secure;"
        " SameSite=Lax"
    )
    assert cookies(secure_cookies="false", session_cookie_name="sid").session_token(TOKEN).startswith(f"sid={value};")


def test_dont_remember_must_be_a_signed_true() -> None:
    """Only Better Auth's dont_remember cookie (``"true"`` signed with the secret) counts, percent-encoded or not."""
    jar = cookies(secure_cookies="false")
    good = sign("true", SECRET)
    assert jar.dont_remember(f"a=1; better-auth.dont_remember={quote(good, safe='')}")
    assert jar.dont_remember(f"better-auth.dont_remember={good}")
    assert not jar.dont_remember(f"better-auth.dont_remember={sign('true', 'another-secret-0123456789abcdefghij')}")
    assert not jar.dont_remember(f"better-auth.dont_remember={sign('false', SECRET)}")
    assert not jar.dont_remember(f"__Secure-better-auth.dont_remember={good}")  # not the name this deployment reads
    assert not jar.dont_remember("better-auth.dont_remember=true")
    assert not jar.dont_remember(None)


@pytest.mark.parametrize("strategy", ["compact", "jwt", "jwe"])
def test_session_data_is_one_the_cookie_cache_accepts(strategy: str) -> None:
    """The new session_data value opens under Better Auth's rules (the gateway's own reader) for the same token."""
    now = time.time()
    jar = cookies(secure_cookies="false", cookie_cache=strategy, cookie_cache_max_age_s=300)
    slid = session("alice", expires_at=now + 604800)
    cookie = jar.session_data(slid, TOKEN, now)
    assert cookie is not None
    name, _, rest = cookie.partition("=")
    value, _, attributes = rest.partition("; ")
    assert name == "better-auth.session_data"
    assert attributes == "Max-Age=300; Path=/; HttpOnly; SameSite=Lax"
    reader = CookieCache("jwt" if strategy == "jwt" else "jwe" if strategy == "jwe" else "compact", (SECRET,))
    opened = reader.open(value, TOKEN)
    assert opened is not None
    assert opened.user == slid.user
    assert reader.open(value, "U" * 32) is None  # another token's


def test_session_data_not_written_off_or_too_big() -> None:
    """The cache off, or a value that would need chunks: no session_data (the client keeps its own)."""
    now = time.time()
    big = session("alice", expires_at=now + 60)
    big.user["name"] = "x" * 5000
    assert cookies().session_data(session(), TOKEN, now) is None
    assert cookies(cookie_cache="compact").session_data(big, TOKEN, now) is None
