"""The forward-auth contract over HTTP: trusted proxies, redirects, policy, headers (a real server)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support import ROOT, raw_http
from tests.support.credentials import SECRET
from tests.support.credentials import cookie as session_cookie
from tests.support.postgres import seed_sessions

if TYPE_CHECKING:
    import asyncpg
    import httpx

LOGIN = "https://app.example.com/login"
PAGE = {"accept": "text/html,application/xhtml+xml", "sec-fetch-mode": "navigate"}


cookie = functools.partial(session_cookie, among_others=True)
"""The session cookie between two others, as browsers send it: the gateway must find it there."""


@pytest.fixture
async def user(db: asyncpg.Connection) -> tuple[str, str]:
    uid = await seed.create_user(db, email="ada@example.com", name="Ada", role="user")
    return uid, await seed.create_session(db, uid)


async def test_redirect_mode(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """?redirect=1: page loads go to the login URL (302, 303 for POST) with the URL to return to; XHR gets 401."""
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_LOGIN_URL": LOGIN})
    original = {"x-original-url": "https://app.example.com/dash?x=1"}
    r = await client.get(gw.url + "/validate?redirect=1", headers=PAGE | original)
    assert r.status_code == 302
    assert r.headers["location"] == f"{LOGIN}?rd={quote('https://app.example.com/dash?x=1', safe='')}"
    r = await client.get(gw.url + "/validate?redirect=1", headers=PAGE | original | {"x-original-method": "POST"})
    assert r.status_code == 303
    xhr = PAGE | original | {"x-requested-with": "XMLHttpRequest"}
    assert (await client.get(gw.url + "/validate?redirect=1", headers=xhr)).status_code == 401
    fetch = PAGE | original | {"sec-fetch-mode": "cors"}
    assert (await client.get(gw.url + "/validate?redirect=1", headers=fetch)).status_code == 401
    # Default mode: 401, with Location (and the page-load hint nginx's error_page uses).
    r = await client.get(gw.url + "/validate", headers=PAGE | original)
    assert r.status_code == 401
    assert r.headers["location"].startswith(LOGIN + "?rd=")
    assert r.headers["x-auth-browser-redirect"] == r.headers["location"]
    # Envoy: the header instead of the query.
    r = await client.get(gw.url + "/validate/dash", headers=PAGE | {"x-auth-redirect": "1", "host": "app.example.com"})
    assert r.status_code == 302


async def test_no_open_redirect(database: str, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """A return URL on a host outside the allow-list is dropped: the login URL alone."""
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_LOGIN_URL": LOGIN})
    for evil in (
        "https://evil.example.net/phish",
        "https://app.example.com.evil.net/",
        "https://evil.net\\@app.example.com/",
    ):
        r = await client.get(gw.url + "/validate?redirect=1", headers=PAGE | {"x-original-url": evil})
        assert r.status_code == 302
        assert r.headers["location"] == LOGIN, evil
    gw2 = start_gateway(
        {"DATABASE_URL": database, "GATEWAY_LOGIN_URL": LOGIN, "GATEWAY_REDIRECT_HOSTS": ".example.com"}
    )
    r = await client.get(
        gw2.url + "/validate?redirect=1", headers=PAGE | {"x-original-url": "https://eu.example.com/x"}
    )
    assert r.headers["location"] == f"{LOGIN}?rd={quote('https://eu.example.com/x', safe='')}"


async def test_untrusted_peer_forwarded_headers_ignored(
    database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """From a peer outside GATEWAY_TRUSTED_PROXIES, X-Original-URL / X-Forwarded-* don't steer anything."""
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_LOGIN_URL": LOGIN, "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"})
    spoofed = {
        "x-original-url": "https://app.example.com/secret",
        "x-forwarded-host": "app.example.com",
        "host": "gw.local",
    }
    r = await client.get(gw.url + "/validate?redirect=1", headers=PAGE | spoofed)
    assert r.status_code == 302
    assert r.headers["location"] == LOGIN  # the return URL came from Host (gw.local), not from the headers


async def test_query_policy_and_403(
    database: str, db: asyncpg.Connection, user: tuple[str, str], start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """allowed_roles / allowed_email_domains: 403 (never a redirect) if not matched, 200 if matched; bad values 400."""
    _, token = user
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_LOGIN_URL": LOGIN})
    assert (
        await client.get(gw.url + "/validate?allowed_roles=admin&redirect=1", headers=cookie(token) | PAGE)
    ).status_code == 403
    assert (await client.get(gw.url + "/validate?allowed_roles=user", headers=cookie(token))).status_code == 200
    assert (
        await client.get(gw.url + "/validate?allowed_email_domains=example.org", headers=cookie(token))
    ).status_code == 403
    # Ada never verified her address: an e-mail rule does not count it (issue 14, finding 3) ...
    assert (
        await client.get(gw.url + "/validate?allowed_email_domains=example.com", headers=cookie(token))
    ).status_code == 403
    assert (
        await client.get(gw.url + "/validate?allowed_emails=ada@example.com", headers=cookie(token))
    ).status_code == 403
    # ... unless the rule says so; a verified user passes without it.
    unverified_ok = "/validate?allowed_email_domains=example.com&allow_unverified_email=1"
    assert (await client.get(gw.url + unverified_ok, headers=cookie(token))).status_code == 200
    verified = await seed.create_user(db, email="grace@example.com")
    await db.execute('update "user" set "emailVerified" = true where id = $1', verified)
    grace = await seed.create_session(db, verified)
    assert (
        await client.get(gw.url + "/validate?allowed_email_domains=example.com", headers=cookie(grace))
    ).status_code == 200
    assert (await client.get(gw.url + "/validate?require_verified_email=1", headers=cookie(token))).status_code == 403
    assert (
        await client.get(gw.url + "/validate?allowed_roles=x&satisfy=most", headers=cookie(token))
    ).status_code == 400


async def test_rules_judge_only_what_the_named_proxy_set(
    database: str, user: tuple[str, str], start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """GATEWAY_PROXY=caddy: a client's X-Original-URL picks no rule; an unjudgeable request is 403 before any lookup."""
    _, token = user
    rules = str(ROOT / "examples" / "rules.toml")
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_RULES_FILE": rules, "GATEWAY_PROXY": "caddy"})
    caddy = {"x-forwarded-method": "POST", "x-forwarded-proto": "https", "x-forwarded-host": "app.example.com"}
    spoof = {"x-original-url": "https://app.example.com/public/x", "x-original-method": "GET"}
    # Issue 14, finding 1: judged as the POST to /reports/ that Caddy describes, not as the client's GET /public/x.
    write = caddy | spoof | {"x-forwarded-uri": "/reports/x"}
    assert (await client.get(gw.url + "/validate", headers=write)).status_code == 401
    r = await client.get(gw.url + "/validate", headers=write | cookie(token))
    assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "forbidden")  # the /reports/ rule said no
    # Issue 14, finding 2: readings that disagree, or a header Caddy would have set missing: refused.
    for uri in ("/REPORTS/x", "//reports/x", "/public/../reports/x", "/public/x,/reports/y"):
        r = await client.get(gw.url + "/validate", headers=caddy | {"x-forwarded-uri": uri} | cookie(token))
        assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "ambiguous_request"), uri
    r = await client.get(gw.url + "/validate", headers=spoof | cookie(token))
    assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "ambiguous_request")
    twice = [*caddy.items(), *cookie(token).items(), ("x-forwarded-uri", "/reports/x"), ("x-forwarded-uri", "/x")]
    r = await client.get(gw.url + "/validate", headers=twice)  # a repeated header: Caddy did not set it alone
    assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "ambiguous_request")
    r = await client.get(
        gw.url + "/validate",
        headers=caddy | {"x-forwarded-uri": "/reports/x", "x-forwarded-method": "GET"} | cookie(token),
    )
    assert r.status_code == 200  # the control: a plain user may read reports
    # The same from a peer that is not a trusted proxy: nothing it says is believed, nothing is judged.
    gw2 = start_gateway(
        {
            "DATABASE_URL": database,
            "GATEWAY_RULES_FILE": rules,
            "GATEWAY_PROXY": "caddy",
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8",
        }
    )
    r = await client.get(gw2.url + "/validate", headers=caddy | {"x-forwarded-uri": "/public/x"})
    assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "ambiguous_request")


async def _raw_get(port: int, target: str, *headers: tuple[str, str]) -> tuple[int, str]:
    """GET exactly this target (no client-side normalisation): the status and X-Auth-Reason."""
    reply = await raw_http.send(port, "GET", target, [*headers, ("Connection", "close")])
    return reply.status, reply.header("x-auth-reason") or ""


async def test_envoy_sub_path_gets_the_same_canonicalisation(database: str, start_gateway: Any) -> None:
    """GATEWAY_PROXY=envoy: /validate/<path> is judged as canonically as a header; its tricks are refused too."""
    rules = str(ROOT / "examples" / "rules.toml")
    gw = start_gateway({"DATABASE_URL": database, "GATEWAY_RULES_FILE": rules, "GATEWAY_PROXY": "envoy"})
    envoy = (("Host", "app.test"), ("X-Forwarded-Proto", "https"), ("X-Original-URL", "https://app.test/public/x"))
    assert await _raw_get(gw.port, "/validate/public/x?a=1", *envoy) == (200, "")
    assert await _raw_get(gw.port, "/validate/private/x", *envoy) == (401, "no_credentials")
    for target in (
        "/validate/public/../admin/x",
        "/validate/public/%2e%2e/admin/x",
        "/validate//admin/x",
        "/validate/ADMIN/x",
        "/validate/%2fadmin/x",
        "/validate/public/x,/admin/y",
        "/validate",  # not Envoy's form
    ):
        assert await _raw_get(gw.port, target, *envoy) == (403, "ambiguous_request"), target
    assert await _raw_get(gw.port, "/validate/public/x", ("Host", "app.test?"), ("X-Forwarded-Proto", "https")) == (
        403,
        "ambiguous_request",
    )


async def test_header_names_aliases_and_credential_stripping(
    database: str, user: tuple[str, str], start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Renamed identity headers, Remote-* aliases, and the Cookie/Authorization an upstream may get instead."""
    uid, token = user
    env = {
        "DATABASE_URL": database,
        "GATEWAY_IDENTITY_HEADERS": "user=X-User-Id",
        "GATEWAY_REMOTE_HEADERS": "true",
        "GATEWAY_STRIP_CREDENTIALS": "true",
    }
    gw = start_gateway(env)
    r = await client.get(gw.url + "/validate", headers=cookie(token))
    assert r.status_code == 200
    assert r.headers["x-user-id"] == uid
    assert "x-auth-request-user" not in r.headers
    assert r.headers["remote-user"] == uid
    assert r.headers["remote-email"] == "ada@example.com"
    assert r.headers["x-auth-request-groups"] == "user"
    assert r.headers["cookie"] == "theme=dark; other=1"
    assert r.headers["authorization"] == ""
    assert r.headers["x-session-token"] == ""


async def test_hit_path_keeps_better_auths_credential_rules(
    database: str, user: tuple[str, str], start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A cached session is served from the hit path only for the credential that proved it.

    The signed cookie value, sent as an ``Authorization`` header without the Bearer scheme, is no
    Better Auth credential (it is ignored there), even once that session is cached.
    """
    uid, token = user
    gw = start_gateway({"DATABASE_URL": database})
    value = quote(sign(token, SECRET), safe="")
    for _ in range(2):  # the second answer comes from the LRU
        r = await client.get(gw.url + "/validate", headers=cookie(token))
        assert r.status_code == 200
        assert r.headers["x-auth-request-user"] == uid
    r = await client.get(gw.url + "/validate", headers={"authorization": value})
    assert r.status_code == 401
    assert r.headers["x-auth-reason"] == "no_credentials"
    r = await client.get(gw.url + "/validate", headers={"authorization": "Basic " + value} | cookie(token))
    assert r.status_code == 200  # another scheme is not Better Auth's: the cookie counts
    r = await client.get(gw.url + "/validate", headers={"authorization": "bEaReR " + sign(token, SECRET)})
    assert r.status_code == 200


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_a_cookie_spelled_as_another_kinds_key_is_no_l1_hit(
    signed: bool, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A cookie's value can be spelled as another kind's cache key (``Bearer <value>``,
    ``x:<value>``); once the bearer (or ``X-Session-Token``) was checked and cached, that cookie
    must not hit its entry: Better Auth reads it as the token ``Bearer <token>``, whose check fails
    (red team, round 2, finding 3). Unsigned, the raw token is accepted as a bearer but never as a
    cookie. Both the hit path (``/validate``) and the decider (``get-session``) are asked."""
    (token,) = await seed_sessions(database, 1)
    gw = start_gateway({"DATABASE_URL": database})
    value = sign(token, SECRET) if signed else token
    for kind, first in (("Bearer ", {"authorization": f"Bearer {value}"}), ("x:", {"x-session-token": value})):
        forged = {"cookie": f"better-auth.session_token={kind}{value}"}
        r = await client.get(gw.url + "/validate", headers=forged)
        assert r.status_code == 401  # control: not cached yet, the check refuses it
        r = await client.get(gw.url + "/validate", headers=first)
        assert r.status_code == 200  # cached under its home key
        r = await client.get(gw.url + "/validate", headers=forged)
        assert r.status_code == 401, kind  # before: 200 from the L1
        r = await client.get(gw.url + "/api/auth/get-session", headers=forged)
        assert r.status_code == 200
        assert r.json() is None, kind
