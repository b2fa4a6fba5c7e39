"""The original request behind a forward-auth call, and per-route policy (pure, no I/O)."""

from __future__ import annotations

import pytest

from gateway import policy
from gateway.forwarding import Original, original_request, parse_networks
from gateway.sessions import Session

LOOPBACK = parse_networks("127.0.0.0/8,::1/128")


def ask(
    path: str = "/validate", peer: str = "127.0.0.1:5555", method: str = "GET", query: str = "", **headers: str
) -> Original:
    h = {k.replace("_", "-"): v for k, v in headers.items()}
    h.setdefault("host", "gw.internal")
    return original_request(
        method=method, scheme="http", path=path, query=query, peer=peer, header=h.get, networks=LOOPBACK
    )


def test_nginx_x_original_url_wins() -> None:
    """X-Original-URL and X-Original-Method (nginx, ingress-nginx) give scheme, host, URI and method."""
    o = ask(x_original_url="https://app.example.com/a/b?c=1", x_original_method="POST", x_forwarded_proto="")
    assert (o.method, o.scheme, o.host, o.uri) == ("POST", "https", "app.example.com", "/a/b?c=1")
    assert o.url == "https://app.example.com/a/b?c=1"


def test_traefik_and_caddy_x_forwarded() -> None:
    """X-Forwarded-Method/Proto/Host/Uri (Traefik, Caddy) give the original request."""
    o = ask(
        method="GET",
        x_forwarded_method="DELETE",
        x_forwarded_proto="https",
        x_forwarded_host="app.example.com",
        x_forwarded_uri="/items/7",
    )
    assert (o.method, o.scheme, o.host, o.uri) == ("DELETE", "https", "app.example.com", "/items/7")


def test_envoy_sub_path() -> None:
    """/validate/<path> (Envoy's path_prefix): the sub-path, the query, the request's own method."""
    o = ask(
        path="/validate/api/v1/items", method="PUT", query="page=2", host="app.example.com", x_forwarded_proto="https"
    )
    assert (o.method, o.scheme, o.host, o.uri) == ("PUT", "https", "app.example.com", "/api/v1/items?page=2")


def test_x_original_uri_fallback() -> None:
    """X-Original-URI with Host, when nothing else is there."""
    o = ask(x_original_uri="/only/uri", host="app.example.com")
    assert (o.host, o.uri) == ("app.example.com", "/only/uri")


def test_untrusted_peer_headers_ignored() -> None:
    """From a peer outside the trusted proxies, forwarded headers count for nothing."""
    o = ask(peer="203.0.113.9:4000", x_original_url="https://evil.example.com/x", x_forwarded_for="1.2.3.4")
    assert (o.host, o.uri, o.client_ip) == ("gw.internal", "/validate", "203.0.113.9")


def test_client_ip_is_rightmost_untrusted_hop() -> None:
    """The right-most X-Forwarded-For entry that isn't a trusted proxy is the client."""
    assert ask(x_forwarded_for="6.6.6.6, 198.51.100.7, 127.0.0.1").client_ip == "198.51.100.7"
    assert ask(x_forwarded_for="127.0.0.2").client_ip == "127.0.0.2"
    assert ask(x_real_ip="198.51.100.8").client_ip == "198.51.100.8"
    assert ask(peer="[::1]:9000").client_ip == "::1"
    assert ask(x_forwarded_for="garbage, ,").client_ip == "127.0.0.1"


def session(role: str | None = "user", email: str = "ada@example.com", *, verified: bool = True) -> Session:
    return Session(1e12, 0.0, {"id": "s"}, {"id": "u", "email": email, "emailVerified": verified}, role)


@pytest.mark.parametrize(
    ("query", "who", "allowed"),
    [
        ("allowed_roles=admin", session("admin"), True),
        ("allowed_roles=admin", session("user"), False),
        ("allowed_roles=admin", session("user,admin"), True),
        ("allowed_roles=admin", session(None), False),
        ("allowed_email_domains=example.com", session(), True),
        ("allowed_email_domains=example.org", session(), False),
        ("allowed_email_domains=.example.com", session(email="a@eu.example.com"), True),
        ("allowed_emails=ADA@example.com", session(), True),
        ("require_verified_email=1", session(verified=False), False),
        # An unverified address matches no e-mail rule unless the rule says so (issue 14, finding 3).
        ("allowed_email_domains=example.com", session(verified=False), False),
        ("allowed_emails=ada@example.com", session(verified=False), False),
        ("allowed_email_domains=example.com&satisfy=any", session(verified=False), False),
        ("allowed_email_domains=example.com&allow_unverified_email=1", session(verified=False), True),
        ("allowed_emails=ada@example.com&allow_unverified_email=true", session(verified=False), True),
        ("allowed_roles=admin&allowed_emails=ada@example.com&satisfy=any", session("admin", verified=False), True),
        ("allowed_roles=admin&allowed_email_domains=example.com", session("user"), False),
        ("allowed_roles=admin&allowed_email_domains=example.com&satisfy=any", session("user"), True),
    ],
)
def test_query_policies(query: str, who: Session, allowed: bool) -> None:
    """Policy parameters on the auth URL decide who may pass."""
    rule = policy.from_query(query)
    assert rule is not None
    assert rule.allows(who) is allowed


def test_email_rules_need_emailverified_true() -> None:
    """Only ``emailVerified: true`` counts: missing, null, or a truthy non-boolean is unverified."""
    rule = policy.from_query("allowed_email_domains=example.com")
    assert rule is not None
    for verified in ({}, {"emailVerified": None}, {"emailVerified": "true"}, {"emailVerified": 1}):
        who = Session(1e12, 0.0, {"id": "s"}, {"id": "u", "email": "ada@example.com"} | verified)
        assert rule.allows(who) is False, verified


def test_no_policy_and_bad_policy() -> None:
    """A query without policy parameters is no policy; a bad one is an error."""
    assert policy.from_query("redirect=1") is None
    assert policy.from_query("") is None
    with pytest.raises(ValueError, match="satisfy"):
        policy.from_query("allowed_roles=a&satisfy=most")


def test_rules_file(tmp_path) -> None:
    """The first rule matching host, path prefix and method applies; otherwise the default."""
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\npath_prefix = "/public"\nallow_anonymous = true\n\n'
        '[[rules]]\nhost = ".example.com"\npath_prefix = "/admin"\nmethods = ["POST"]\nallowed_roles = ["admin"]\n'
    )
    rules = policy.load_rules(str(path))
    post = Original("POST", "https", "app.example.com", "/admin/users", "1.1.1.1")
    assert rules.for_request(post).allowed_roles == {"admin"}
    assert rules.for_request(post._replace(method="GET")) is policy.DEFAULT
    assert rules.for_request(post._replace(host="app.example.org")) is policy.DEFAULT
    assert rules.for_request(post._replace(uri="/public/x")).allow_anonymous
    (tmp_path / "bad.toml").write_text("[[rules]]\nallowed_rolez = 1\n")
    with pytest.raises(ValueError, match="rules"):
        policy.load_rules(str(tmp_path / "bad.toml"))
