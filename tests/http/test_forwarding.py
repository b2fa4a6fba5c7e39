"""The original request behind a forward-auth call, and per-route policy (pure, no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.networks import parse_ip, parse_networks
from gateway.core.sessions import Session
from gateway.http import original as reading
from gateway.http import policy
from gateway.http.addresses import client_ip, trusted
from gateway.http.original import Original, Proxy, original_request, original_target

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.core.networks import Network

LOOPBACK = parse_networks("127.0.0.0/8,::1/128")


class Headers:
    """Request headers as granian gives them: ``get`` the first, ``get_all`` every one."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = [(k.lower(), v) for k, v in pairs]

    def get(self, key: str) -> str | None:
        return next((v for k, v in self._pairs if k == key), None)

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]


def ask(
    proxy: Proxy = "",
    *pairs: tuple[str, str],
    path: str = "/validate",
    peer: str = "127.0.0.1:5555",
    method: str = "GET",
    query: str = "",
    host: str = "gw.internal",
) -> Original | None:
    return original_request(
        proxy=proxy,
        method=method,
        scheme="http",
        path=path,
        query=query,
        peer=peer,
        headers=Headers([("host", host), *pairs]),
        networks=LOOPBACK,
    )


# What each proxy sets (and overwrites) on the auth request, as the example configurations do.
NGINX = (("X-Original-URL", "https://app.example.com/reports/7?c=1"), ("X-Original-Method", "POST"))
TRAEFIK = (
    ("X-Forwarded-Method", "POST"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "app.example.com"),
    ("X-Forwarded-Uri", "/reports/7?c=1"),
)
# What a client adds, hoping to be judged by another convention's headers.
SPOOF_ORIGINAL = (
    ("X-Original-URL", "http://app.example.com/public/x"),
    ("X-Original-Method", "GET"),
    ("X-Original-URI", "/public/x"),
)
SPOOF_FORWARDED = (
    ("X-Forwarded-Uri", "/public/x"),
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Host", "other.example.com"),
)
WANT = ("POST", "https", "app.example.com", "/reports/7?c=1")


@pytest.mark.parametrize("proxy", ["nginx", "ingress-nginx"])
def test_nginx_reads_only_what_its_config_sets(proxy: Proxy) -> None:
    """nginx: X-Original-URL and X-Original-Method; a client's X-Forwarded-* and X-Original-URI count for nothing."""
    o = ask(proxy, *SPOOF_FORWARDED, ("X-Original-URI", "/public/x"), *NGINX)
    assert o is not None
    assert (o.method, o.scheme, o.host, o.uri) == WANT
    assert o.url == "https://app.example.com/reports/7?c=1"


def test_traefik_reads_only_x_forwarded() -> None:
    """Traefik: X-Forwarded-Method/Proto/Host/Uri; a client's X-Original-* (copied through) counts nothing."""
    o = ask("traefik", *SPOOF_ORIGINAL, *TRAEFIK)
    assert o is not None
    assert (o.method, o.scheme, o.host, o.uri) == WANT


def test_caddy_reads_host_not_x_forwarded_host() -> None:
    """Caddy: X-Forwarded-Method/Proto/Uri and the original ``Host`` forward_auth passes on unchanged.

    Red team of issue 14, K: behind a load balancer in Caddy's trusted_proxies, Caddy keeps the
    client's X-Forwarded-Host (checked with Caddy 2.6: the auth request carried the client's
    ``X-Forwarded-Host: app.test`` and ``Host: x.internal.example.com``).
    """
    o = ask("caddy", *SPOOF_ORIGINAL, *TRAEFIK, host="app.example.com")
    assert o is not None
    assert (o.method, o.scheme, o.host, o.uri) == WANT
    o = ask("caddy", *TRAEFIK, host="x.internal.example.com")
    assert o is not None
    assert o.hostname == "x.internal.example.com"  # not the X-Forwarded-Host the client sent


def test_envoy_sub_path() -> None:
    """Envoy: the /validate/<path> sub-path, the request's method, Host and X-Forwarded-Proto; nothing else."""
    o = ask(
        "envoy",
        *SPOOF_ORIGINAL,
        *SPOOF_FORWARDED,
        ("X-Forwarded-Proto", "https"),
        path="/validate/api/v1/items",
        method="PUT",
        query="page=2",
        host="app.example.com",
    )
    assert o is not None
    assert (o.method, o.scheme, o.host, o.uri) == ("PUT", "https", "app.example.com", "/api/v1/items?page=2")
    assert ask("envoy", ("X-Forwarded-Proto", "https"), *SPOOF_ORIGINAL) is None  # no sub-path: not Envoy's form


@pytest.mark.parametrize(
    ("proxy", "pairs", "path"),
    [
        ("nginx", NGINX[:1], "/validate"),  # no method
        ("nginx", (*NGINX, NGINX[0]), "/validate"),  # the URL twice: the config did not overwrite it
        ("nginx", ((NGINX[0][0], "https://app.example.com/public/x, https://app.example.com/admin"), NGINX[1]), ""),
        ("nginx", (NGINX[0], ("X-Original-Method", "GET, POST")), "/validate"),
        ("nginx", (NGINX[0], ("X-Original-Method", "get")), "/validate"),
        ("nginx", (("X-Original-URL", "ftp://app.example.com/x"), NGINX[1]), "/validate"),
        ("nginx", NGINX, "/validate/x"),  # a sub-path only Envoy uses
        ("traefik", TRAEFIK[:3], "/validate"),  # no X-Forwarded-Uri
        ("traefik", (*TRAEFIK, ("X-Forwarded-Uri", "/public/x")), "/validate"),
        ("caddy", (*TRAEFIK[:3], ("X-Forwarded-Uri", "/public/x,/admin/y")), "/validate"),
        ("caddy", (("X-Forwarded-Proto", "https, http"), *TRAEFIK[:1], *TRAEFIK[2:]), "/validate"),
        ("traefik", (*TRAEFIK, ("X-Forwarded-Host", "other.example.com")), "/validate"),
        ("caddy", (*TRAEFIK, ("X-Forwarded-Uri", "/public/x")), "/validate"),
        ("envoy", (), "/validate/x"),  # no X-Forwarded-Proto from headers_to_add
    ],
)
def test_missing_repeated_or_listed_headers_are_refused(
    proxy: Proxy, pairs: tuple[tuple[str, str], ...], path: str
) -> None:
    """A header the proxy must set, missing, repeated or holding a list: no original request (refused, not cut)."""
    assert ask(proxy, *pairs, path=path or "/validate") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://app.test?/admin/x",
        "http://app.test#/admin/x",
        "http://app.test@x.internal.example.com/admin/x",
        "http://app.test\\@evil.example/x",
        "http://app.test /x",
        "http://app.test..:80/x",
        "http://app.test%2e/x",
        "http:///admin/x",
        "http://app.test",
        "http://app.test:99999999/x",
        "//app.test/x",
        "http://app.test/public/x,/admin/y",
        "http://app.test/a b",
        "http://app.test/caf\u00e9",
        "http://app.test/%2fadmin",
        "http://app.test/public/%252e%252e/admin",
        "http://app.test/a%zz",
        "http://app.test/a%00b",
        "http://app.test/public\\..\\admin",
        "http://app.test/x#frag",
    ],
)
def test_unparsable_original_urls_are_refused(url: str) -> None:
    """Hosts with ?, #, @, /, %, spaces or empty labels, and paths two parsers could read apart: refused."""
    assert ask("nginx", ("X-Original-URL", url), ("X-Original-Method", "GET")) is None


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("X.Internal.Example.COM", "x.internal.example.com"),
        ("x.internal.example.com.", "x.internal.example.com"),
        ("x.internal.example.com.:8443", "x.internal.example.com"),
        ("[::1]:8080", "[::1]"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_hosts_are_compared_as_dns_does(host: str, name: str) -> None:
    """Case, a trailing dot and the port never change which host a rule sees."""
    o = ask("nginx", ("X-Original-URL", f"https://{host}/x"), ("X-Original-Method", "GET"))
    assert o is not None
    assert o.hostname == name


def test_untrusted_peer() -> None:
    """From a peer outside the trusted proxies nothing it says counts; with a proxy configured, nothing is known."""
    spoof = (*SPOOF_ORIGINAL, ("X-Forwarded-For", "1.2.3.4"))
    o = ask("", *spoof, peer="203.0.113.9:4000")
    assert o is not None
    assert (o.host, o.uri, o.client_ip) == ("gw.internal", "/validate", "203.0.113.9")
    assert ask("nginx", *NGINX, peer="203.0.113.9:4000") is None


def test_without_a_proxy_the_return_url_is_guessed() -> None:
    """No GATEWAY_PROXY (no rules file then): the first convention present names the page to return to."""
    o = ask("", ("X-Original-URL", "https://app.example.com/a/b?c=1"), ("X-Original-Method", "POST"))
    assert o is not None
    assert (o.method, o.url) == ("POST", "https://app.example.com/a/b?c=1")
    o = ask(
        "", ("X-Forwarded-Host", "app.example.com"), ("X-Forwarded-Uri", "/items/7"), ("X-Forwarded-Proto", "https")
    )
    assert o is not None
    assert o.url == "https://app.example.com/items/7"
    o = ask("", ("X-Original-URI", "/only/uri"), host="app.example.com")
    assert o is not None
    assert o.url == "http://app.example.com/only/uri"
    assert ask("", ("X-Original-URL", "http://app.test?/x")) is None


def test_client_ip_is_rightmost_untrusted_hop() -> None:
    """The right-most X-Forwarded-For entry that isn't a trusted proxy is the client."""

    def client(*pairs: tuple[str, str], peer: str = "127.0.0.1:5555") -> str:
        o = ask("", *pairs, peer=peer)
        assert o is not None
        return o.client_ip

    assert client(("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 127.0.0.1")) == "198.51.100.7"
    assert client(("X-Forwarded-For", "127.0.0.2")) == "127.0.0.2"
    assert client(("X-Real-IP", "198.51.100.8")) == "127.0.0.1"  # anyone can send it: never believed
    assert client(peer="[::1]:9000") == "::1"
    assert client(("X-Forwarded-For", "garbage, ,")) == "127.0.0.1"
    assert client(("X-Forwarded-For", "198.51.100.9, garbage, 127.0.0.1")) == "127.0.0.1"  # no proxy wrote it


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


def test_rules_file(tmp_path: Path) -> None:
    """The first rule matching host, path prefix and method applies; otherwise the default."""
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\npath_prefix = "/public"\nallow_anonymous = true\n\n'
        '[[rules]]\nhost = ".example.com"\npath_prefix = "/admin"\nmethods = ["POST"]\nallowed_roles = ["admin"]\n'
    )
    rules = policy.load_rules(str(path))
    post = Original("POST", "https", "app.example.com", "/admin/users", "1.1.1.1")
    assert rules.for_request(post).allowed_roles == {"admin"}  # type: ignore[union-attr]
    assert rules.for_request(post._replace(method="GET")) is policy.DEFAULT
    assert rules.for_request(post._replace(host="app.example.org")) is policy.DEFAULT
    assert rules.for_request(post._replace(uri="/public/x")).allow_anonymous  # type: ignore[union-attr]
    (tmp_path / "bad.toml").write_text("[[rules]]\nallowed_rolez = 1\n")
    with pytest.raises(ValueError, match="rules"):
        policy.load_rules(str(tmp_path / "bad.toml"))
    # Nested past the parser's depth (a RecursionError): refused like any bad file, never raised as is.
    (tmp_path / "deep.json").write_text('{"x":' + "[" * 5_000 + "]" * 5_000 + "}")
    (tmp_path / "deep.toml").write_text("x = " + "[" * 5_000 + "]" * 5_000 + "\n")
    for deep in ("deep.json", "deep.toml"):
        with pytest.raises(ValueError, match=deep):
            policy.load_rules(str(tmp_path / deep))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('path_prefix = "admin"', "must start with '/'"),
        ('methods = ["post"]', "upper-case methods"),
        ('host = "app.test?"', "not a host name"),
    ],
)
def test_rules_that_could_never_match_are_refused(tmp_path: Path, rule: str, message: str) -> None:
    """A rule that silently never applies would leave its paths to the default: the file is refused."""
    path = tmp_path / "rules.toml"
    path.write_text(f"[[rules]]\n{rule}\nallowed_roles = ['admin']\n")
    with pytest.raises(ValueError, match=message):
        policy.load_rules(str(path))


RULES = policy.load_rules(str(Path(__file__).parent.parent.parent / "examples" / "rules.toml"))
INTERNAL_ADMIN, INTERNAL_REPORTS, INTERNAL, PUBLIC, ADMIN, REPORTS = RULES.rules


@pytest.mark.parametrize(
    ("method", "host", "path", "rule"),
    [
        # Issue 14, finding 2: each of these reached a looser rule than the one it names.
        ("GET", "app.test", "/public/../admin/x", None),
        ("GET", "app.test", "//admin/x", None),
        ("GET", "app.test", "/%61dmin/x", None),
        ("GET", "app.test", "/ADMIN/x", None),
        ("GET", "app.test", "/public/%2e%2e/admin/x", None),
        ("GET", "app.test", "/public/%2E%2E/admin/x", None),
        ("GET", "app.test", "/public/..;/admin/x", None),
        ("POST", "app.test", "//reports/x", None),
        ("POST", "app.test", "/Reports/x", None),
        ("POST", "app.test", "/./reports/x", None),
        ("GET", "x.internal.example.com.", "/x", INTERNAL),
        ("GET", "X.INTERNAL.example.com", "/x", INTERNAL),
        ("GET", "x.internal.example.com.:8443", "/x", INTERNAL),
        # Case can't open a looser rule either.
        ("GET", "app.test", "/PUBLIC/x", None),
        ("GET", "app.test", "/Public/../private", None),
        # Readings that agree are judged as usual.
        ("GET", "app.test", "/admin/./x", ADMIN),
        ("GET", "app.test", "/admin//x", ADMIN),
        ("GET", "app.test", "/admin/%7Ex", ADMIN),
        ("GET", "app.test", "/public/%78", PUBLIC),
        ("GET", "app.test", "/api//Items/../x", policy.DEFAULT),
        ("GET", "app.test", "/REPORTS/x", policy.DEFAULT),  # reads of reports are the default rule's anyway
        ("POST", "app.test", "/reports/x", REPORTS),
    ],
)
def test_rules_see_every_reading_of_a_path(method: str, host: str, path: str, rule: policy.Policy | None) -> None:
    """A path some part behind the proxy could read as another rule's is refused (None); host spellings are one host."""
    assert RULES.for_request(Original(method, "https", host, path, "1.1.1.1")) is rule


# --- Red team of the issue-14 fixes: rules that name something guard it --------------------------


@pytest.mark.parametrize(
    ("method", "uri", "rule"),
    [
        # D: "only admins change reports" covers the collection a POST creates in.
        ("POST", "/reports", REPORTS),
        ("POST", "/reports?title=x", REPORTS),
        ("POST", "/reports.json", REPORTS),
        ("POST", "/reports/7", REPORTS),
        ("GET", "/reports", policy.DEFAULT),
        # A prefix ending in "/" covers the path without it, and nothing else.
        ("GET", "/public", PUBLIC),
        ("GET", "/publicity", policy.DEFAULT),
        # O: every write, whatever its name.
        ("MOVE", "/reports/1", REPORTS),
        ("PURGE", "/reports/1", REPORTS),
        ("OPTIONS", "/reports/1", policy.DEFAULT),
        ("HEAD", "/reports/1", policy.DEFAULT),
    ],
)
def test_example_rules_guard_what_they_name(method: str, uri: str, rule: policy.Policy) -> None:
    """examples/rules.toml, read as its comments say (red team of issue 14, D and O)."""
    assert RULES.for_request(Original(method, "https", "app.test", uri, "1.1.1.1")) is rule


def test_leading_dot_host_covers_the_domain_itself() -> None:
    """``.internal.example.com`` is internal.example.com and its subdomains (nginx's server_name), not a suffix."""
    for host in ("internal.example.com", "x.internal.example.com", "INTERNAL.example.com."):
        assert RULES.for_request(Original("GET", "https", host, "/x", "1.1.1.1")) is INTERNAL, host
    for host in ("xinternal.example.com", "example.com"):
        assert RULES.for_request(Original("GET", "https", host, "/x", "1.1.1.1")) is policy.DEFAULT, host
    # The internal host's own /admin and /reports rules keep its e-mail gate (red team of issue 14, N).
    assert RULES.for_request(Original("GET", "https", "internal.example.com", "/admin/x", "")) is INTERNAL_ADMIN
    assert RULES.for_request(Original("POST", "https", "a.internal.example.com", "/reports", "")) is INTERNAL_REPORTS
    assert RULES.for_request(Original("GET", "https", "a.internal.example.com", "/public/x", "")) is INTERNAL


OVERRIDE_RULES = '[[rules]]\npath_prefix = "/items/"\nmethods = ["DELETE"]\nallowed_roles = ["admin"]\n'


def plain_headers() -> tuple[tuple[str, str], ...]:
    return ("X-Original-URL", "https://app.test/items/7"), ("X-Original-Method", "POST")


@pytest.mark.parametrize(
    ("pairs", "uri"),
    [
        ((("X-HTTP-Method-Override", "DELETE"),), "/items/7"),
        ((("X-HTTP-Method", "delete"),), "/items/7"),  # frameworks upper-case it
        ((("X-Method-Override", "DELETE"),), "/items/7"),
        ((("X-HTTP-Method-Override", "PUT, DELETE"),), "/items/7"),
        ((), "/items/7?_method=DELETE"),
        ((), "/items/7?a=1&_method=delete"),
        ((), "/items/7?%5Fmethod=DELETE"),
    ],
)
def test_method_override_is_judged_as_the_method_it_names(
    tmp_path: Path, pairs: tuple[tuple[str, str], ...], uri: str
) -> None:
    """Red team of issue 14, E: POST + an override runs as DELETE in Symfony, Laravel, Rails, Express, ASP.NET.

    The request is judged as every method it may run as; here POST (the default rule) and DELETE
    (admins) disagree, so it is refused.
    """
    path = tmp_path / "rules.toml"
    path.write_text(OVERRIDE_RULES)
    rules = policy.load_rules(str(path))
    url = ("X-Original-URL", f"https://app.test{uri}")
    o = ask("nginx", url, ("X-Original-Method", "POST"), *pairs)
    assert o is not None
    assert "DELETE" in o.methods
    assert rules.for_request(o) is None
    plain = ask("nginx", *plain_headers())
    assert plain is not None
    assert rules.for_request(plain) is policy.DEFAULT  # control: a plain POST is the default rule's
    # An override naming the method already judged changes nothing; one naming no method is refused.
    same = ask("nginx", url, ("X-Original-Method", "DELETE"), *pairs)
    assert same is not None
    assert rules.for_request(same) is (rules.rules[0] if o.methods == {"POST", "DELETE"} else None)  # PUT too
    assert ask("nginx", url, ("X-Original-Method", "POST"), ("X-HTTP-Method-Override", "DEL ETE")) is None
    query = ask("nginx", ("X-Original-URL", "https://app.test/items/7?q=_method"), ("X-Original-Method", "POST"))
    assert query is not None
    assert query.methods == {"POST"}  # "_method" as a value is no override
    empty = ask("nginx", *plain_headers(), ("X-HTTP-Method-Override", ""))
    assert empty is not None
    assert empty.methods == {"POST"}  # an empty value overrides nothing, in every framework


@pytest.mark.parametrize(
    "path",
    ["/validate/public/x?/../../admin/y", "/validate/public/?/../admin", "/validate/public/x#/../../admin"],
)
def test_envoy_subpath_decoded_query_or_fragment_is_refused(path: str) -> None:
    """Red team of issue 14, F: granian decodes the path, so ``%3F`` arrives as ``?``; it can't be read back."""
    assert ask("envoy", ("X-Forwarded-Proto", "https"), path=path, host="app.test") is None
    assert ask("envoy", ("X-Forwarded-Proto", "https"), path="/validate/public/x", host="app.test") is not None


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('host = "admin.example.com:8443"', "not a host name"),
        ('host = "admin.example.com/x"', "not a host name"),
        ('path_prefix = "/Billing"', "lower case"),
        ('methods = ["GET"]\nmethods_except = ["POST"]', "not both"),
        ('methods_except = ["get"]', "upper-case"),
    ],
)
def test_rules_that_match_less_than_they_name_are_refused(tmp_path: Path, rule: str, message: str) -> None:
    """Red team of issue 14, I: a host with a port (dropped before comparing) or a mixed-case prefix never matched."""
    path = tmp_path / "rules.toml"
    path.write_text(f"[[rules]]\n{rule}\nallowed_roles = ['admin']\n")
    with pytest.raises(ValueError, match=message):
        policy.load_rules(str(path))


def test_get_rule_covers_head(tmp_path: Path) -> None:
    """Red team of issue 14, I: every framework runs HEAD with the GET handler."""
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\npath_prefix = "/billing"\nmethods = ["GET"]\nallowed_roles = ["admin"]\n')
    rules = policy.load_rules(str(path))
    head = Original("HEAD", "https", "app.test", "/billing/export", "1.1.1.1")
    assert rules.for_request(head) is rules.rules[0]
    assert rules.for_request(head._replace(method="POST")) is policy.DEFAULT


def test_query_policy_and_rule_both_apply() -> None:
    """Red team of issue 14, N: ``?allowed_roles=admin`` adds to the host's rule, it does not replace it."""
    admins = policy.from_query("allowed_roles=admin")
    assert admins is not None
    both = policy.both(admins, INTERNAL)
    assert not both.allows(session("admin", verified=False))  # the host rule: a verified example.com address
    assert not both.allows(session("user"))  # the query: admins
    assert both.allows(session("admin"))
    assert not both.allow_anonymous
    assert policy.both(admins, policy.DEFAULT) is admins
    assert policy.both(None, INTERNAL) is INTERNAL
    anonymous = policy.from_query("allow_anonymous=1")
    assert anonymous is not None
    assert policy.both(anonymous, PUBLIC).allow_anonymous
    assert not policy.both(anonymous, INTERNAL).allow_anonymous


HOST_RULES = """
[[rules]]
host = "public.example.com"
allow_anonymous = true

[[rules]]
host = ".example.com"
allowed_roles = ["admin"]
"""


def test_a_host_rule_covers_only_the_host_it_names(tmp_path: Path) -> None:
    """Red team, round 2, finding 1: ``public.example.com`` (anonymous) covered ``ublic.example.com``.

    ``_host_matches`` compared ``hostname == rule_host[1:]`` for every rule, dotted or not: on a
    deployment serving ``*.example.com``, that host got the anonymous rule instead of the admins-only
    rule that names it.
    """
    path = tmp_path / "rules.toml"
    path.write_text(HOST_RULES)
    rules = policy.load_rules(str(path))
    for host, rule in (
        ("public.example.com", 0),  # control
        ("PUBLIC.example.com.", 0),
        ("ublic.example.com", 1),
        ("other.example.com", 1),
        ("example.com", 1),  # the leading-dot rule covers its name without the dot
    ):
        assert rules.for_request(Original("GET", "https", host, "/x", "1.1.1.1")) is rules.rules[rule], host
    for host in ("xexample.com", "ublic.example.co", "example.org"):
        assert rules.for_request(Original("GET", "https", host, "/x", "1.1.1.1")) is policy.DEFAULT, host
    through_nginx = ask("nginx", ("X-Original-URL", "https://ublic.example.com/x"), ("X-Original-Method", "GET"))
    assert through_nginx is not None
    assert rules.for_request(through_nginx) is rules.rules[1]


@pytest.mark.parametrize(
    ("uri", "pairs"),
    [
        # PHP turns "." and " " (and an unmatched "[") in a query name into "_" before Symfony or
        # Laravel read $_GET: ?.method=DELETE is $_GET["_method"], run as a DELETE.
        ("/items/7?.method=DELETE", ()),
        ("/items/7?+method=DELETE", ()),
        ("/items/7?%20method=DELETE", ()),
        ("/items/7?%2Emethod=DELETE", ()),
        ("/items/7?[method=DELETE", ()),
        ("/items/7?%5Bmethod=DELETE", ()),
        ("/items/7?a=1&+_method=DELETE", ()),  # PHP drops a leading space
        ("/items/7?_method%00x=DELETE", ()),  # and ends a name at a NUL
        # CGI/FastCGI turns "-" and "_" alike into "_": PHP sees HTTP_X_HTTP_METHOD_OVERRIDE.
        ("/items/7", (("X_HTTP_METHOD_OVERRIDE", "DELETE"),)),
        ("/items/7", (("x-http_method-override", "DELETE"),)),
        ("/items/7", (("X_HTTP_METHOD", "DELETE"),)),
        ("/items/7", (("X_Method_Override", "DELETE"),)),
    ],
)
def test_every_spelling_php_reads_as_an_override_is_judged(
    tmp_path: Path, uri: str, pairs: tuple[tuple[str, str], ...]
) -> None:
    """Red team, round 2, finding 2: ``method_overrides`` looked for the literal ``_method`` only."""
    path = tmp_path / "rules.toml"
    path.write_text(OVERRIDE_RULES)
    rules = policy.load_rules(str(path))
    original = ask("nginx", ("X-Original-URL", f"https://app.test{uri}"), ("X-Original-Method", "POST"), *pairs)
    assert original is not None
    assert original.methods == {"POST", "DELETE"}
    assert rules.for_request(original) is None  # POST and DELETE, two rules: refused, never the POST alone
    # Names PHP reads as another variable are no override.
    for other in ("?_method[]=DELETE", "?_method[x]=DELETE", "?_METHOD=DELETE", "?x.method=DELETE", "?q=.method"):
        plain = ask("nginx", ("X-Original-URL", f"https://app.test/items/7{other}"), ("X-Original-Method", "POST"))
        assert plain is not None
        assert plain.methods == {"POST"}, other


def original_request_as_composed_before(
    *,
    proxy: Proxy,
    method: str,
    scheme: str,
    path: str,
    query: str,
    peer: str,
    headers: Headers,
    networks: Sequence[Network],
) -> Original | None:
    """``original_request`` as it was composed before ``_read`` was shared with ``original_target`` (ddc567b^)."""
    peer_ip = parse_ip(peer)
    if proxy == "envoy" and ("?" in path or "#" in path):
        return None
    request = Original(method, scheme, headers.get("host") or "", path + (f"?{query}" if query else ""), "")
    if not trusted(peer_ip, networks):
        return None if proxy else reading._checked(*request[:4], str(peer_ip or ""))
    request = request._replace(client_ip=client_ip(peer_ip, headers.get, networks))
    if not proxy:
        return reading._guess(request, headers) if path == "/validate" or path.startswith("/validate/") else None
    original = reading._from_proxy(proxy, path, request, headers)
    if original is None:
        return None
    overrides = reading.method_overrides(original.uri, headers)
    if overrides is None:
        return None
    return original._replace(overrides=overrides) if overrides else original


# What each proxy sets, for the differential below to start from (then some dropped, others added).
PROXY_HEADERS: dict[Proxy, list[tuple[str, str]]] = {
    "": [("x-original-url", "https://app.example.com/admin?q=1"), ("x-forwarded-uri", "/a"), ("x-original-uri", "/p")],
    "nginx": [("x-original-url", "https://app.example.com/admin?q=1"), ("x-original-method", "POST")],
    "ingress-nginx": [("x-original-url", "http://app.example.com/x"), ("x-original-method", "GET")],
    "traefik": [*TRAEFIK],
    "caddy": [("x-forwarded-method", "PUT"), ("x-forwarded-proto", "http"), ("x-forwarded-uri", "/r?_method=patch")],
    "envoy": [("x-forwarded-proto", "https")],
}
HEADER_NAMES = [
    "host", "x-original-url", "x-original-method", "x-forwarded-method", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-uri", "x-forwarded-for", "x-original-uri", "x-http-method-override", "X_HTTP_METHOD", "x-real-ip",
]  # fmt: skip
HEADER_VALUES = [
    "", "GET", "POST", "delete", "DELETE, PUT", "https", "app.example.com", "APP.example.com.:443", "a..b", "/admin",
    "/admin?_method=DELETE", "/a%2Fb", "//x/../y", "https://app.example.com/admin?x=1", "127.0.0.1",
    "1.2.3.4, 127.0.0.1", "junk, 10.0.0.1", "[::1]", "/x?.method=PUT", "ftp://h/x", " /x", "\x00",
]  # fmt: skip
header = st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES) | st.text(max_size=16))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    proxy=st.sampled_from(list(PROXY_HEADERS)),
    dropped=st.sets(st.integers(0, 3), max_size=2),
    added=st.lists(header, max_size=4),
    host=st.sampled_from(["app.example.com", "gw.internal", "", "a..b"]),
    method=st.sampled_from(["GET", "POST", "get"]),
    path=st.sampled_from(["/validate", "/validate/", "/validate/admin", "/validate/a?b", "/validate/x/../y", "/other"]),
    query=st.sampled_from(["", "_method=DELETE", "a=1", ".method=PUT", "_method="]),
    peer=st.sampled_from(["127.0.0.1:5", "[::1]:5", "10.0.0.1:5", "", "junk"]),
    networks=st.sampled_from([LOOPBACK, (), parse_networks("0.0.0.0/0,::/0")]),
)
def test_original_request_answers_as_before_and_original_target_names_the_same(
    proxy: Proxy,
    dropped: set[int],
    added: list[tuple[str, str]],
    host: str,
    method: str,
    path: str,
    query: str,
    peer: str,
    networks: Sequence[Network],
) -> None:
    """``original_request`` decides access: sharing ``_read`` with the access line (ddc567b) must not change an
    answer, for any proxy, trusted or not, with headers missing, repeated or added, and overrides. And the
    access line's ``original_target`` names the same method, host and URI whenever there is an answer."""
    pairs = [("host", host)] if host else []
    pairs += [p for i, p in enumerate(PROXY_HEADERS[proxy]) if i not in dropped] + added
    headers = Headers(pairs)

    def read(function: Callable[..., Original | None]) -> Original | None:
        return function(
            proxy=proxy,
            method=method,
            scheme="http",
            path=path,
            query=query,
            peer=peer,
            headers=headers,
            networks=networks,
        )

    answer = read(original_request)
    assert answer == read(original_request_as_composed_before)
    if answer is not None:
        target = read(original_target)
        assert target is not None
        assert target[:4] == answer[:4]
        assert target.client_ip == ""
