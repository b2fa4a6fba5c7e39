"""The original request behind a forward-auth call, from what the proxy in front sets. No I/O.

``docs/forward-auth.md`` §6.2. ``GATEWAY_PROXY`` names the proxy, and only the headers that
proxy itself sets, overwriting whatever the client sent, describe the original request:

- ``nginx``, ``ingress-nginx``: ``X-Original-URL`` + ``X-Original-Method`` (``proxy_set_header``);
- ``traefik``: ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri``;
- ``caddy``: ``X-Forwarded-Method``, ``-Proto``, ``-Uri`` and ``Host`` (forward_auth keeps it);
- ``envoy``: the ``/validate/<path>`` sub-path, the request's method and ``Host``, and
  ``X-Forwarded-Proto`` (``headers_to_add``).

Every other convention's headers are the client's there (Caddy and Traefik copy the client's
headers into the auth request; nginx does unless the config overwrites them) and are never read.
A missing, repeated or unparsable header, or a path or host that ``canonical`` refuses, gives
``None``: the request cannot be judged, and a rule must not guess. So does a method override
(``method_overrides``) that names no method.

Without ``GATEWAY_PROXY`` (allowed only without a rules file) nothing decides on the original
request: it only names the page to return to after the login, so the first convention present
is read as before (a client can only misdirect its own redirect, and the host is allow-listed).

Forwarded headers count only when the TCP peer is a trusted proxy (``addresses``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote_plus

from gateway.core.networks import parse_ip
from gateway.http import canonical
from gateway.http.addresses import client_ip, trusted

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.core.networks import Network
    from gateway.credentials.tokens import Headers
Proxy = Literal["", "nginx", "ingress-nginx", "traefik", "caddy", "envoy"]
PROXIES: tuple[Proxy, ...] = ("nginx", "ingress-nginx", "traefik", "caddy", "envoy")


class Original(NamedTuple):
    """The request a proxy asks about: each part checked by ``canonical``, kept as sent."""

    method: str
    scheme: str
    host: str
    uri: str  # path and query
    client_ip: str
    overrides: frozenset[str] = frozenset()  # methods an override names (``method_overrides``)

    @property
    def url(self) -> str:
        """The absolute URL, as a browser would go back to it."""
        return f"{self.scheme}://{self.host}{self.uri}"

    @property
    def path(self) -> str:
        """The path as sent, without the query."""
        return self.uri.split("?", 1)[0]

    @property
    def hostname(self) -> str:
        """The host as rules compare it: lower case, no trailing dot, no port."""
        return canonical.hostname(self.host) or ""

    @property
    def methods(self) -> frozenset[str]:
        """Every method the app may run the request as: the one sent, and any an override names."""
        return self.overrides | {self.method} if self.overrides else frozenset((self.method,))

    @property
    def paths(self) -> frozenset[str]:
        """Every reading of the path a rule must agree on (``canonical.readings``)."""
        return canonical.readings(self.path)


def original_request(  # noqa: PLR0913  (the request's parts, each named)
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
    """The original request of a forward-auth call, or ``None`` if it cannot be known for sure.

    From an untrusted peer it is the request itself, unless a proxy is configured: then nothing
    the peer says can be believed (see the module docstring).
    """
    peer_ip = parse_ip(peer)
    believed = trusted(peer_ip, networks)
    client = client_ip(peer_ip, headers.get, networks) if believed else str(peer_ip or "")
    original = _read(proxy, method, scheme, path, query, headers, believed=believed, client=client)
    if original is None or not proxy or not believed:
        return original  # untrusted with a proxy is None already; no proxy: no override is read
    overrides = method_overrides(original.uri, headers)
    if overrides is None:
        return None
    return original._replace(overrides=overrides) if overrides else original


def original_target(  # noqa: PLR0913  (the request's parts, each named)
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
    """What an access line names of a forward-auth call: ``original_request``'s reading.

    The same method, host and URI, read from the same headers under the same trust, without what
    only a rule needs: the client's address (left empty) and the method overrides (which only ever
    refuse). It costs a line a few microseconds less.
    """
    believed = trusted(parse_ip(peer), networks)
    return _read(proxy, method, scheme, path, query, headers, believed=believed, client="")


def _read(  # noqa: PLR0913, PLR0917  (the request's parts, each named)
    proxy: Proxy, method: str, scheme: str, path: str, query: str, headers: Headers, *, believed: bool, client: str
) -> Original | None:
    """The original request as the proxy describes it (``believed``: its peer is a trusted proxy)."""
    if proxy == "envoy" and ("?" in path or "#" in path):
        return None  # decoded by granian: see _from_envoy
    request = Original(method, scheme, headers.get("host") or "", path + (f"?{query}" if query else ""), client)
    if not believed:
        return None if proxy else _checked(*request[:5])
    if not proxy:
        return _guess(request, headers) if path == "/validate" or path.startswith("/validate/") else None
    return _from_proxy(proxy, path, request, headers)


def _from_proxy(proxy: Proxy, path: str, request: Original, headers: Headers) -> Original | None:
    if proxy == "envoy":
        return _from_envoy(request, headers)
    if path != "/validate":
        return None  # the auth URL is the proxy's configuration: a sub-path is not ours to read
    if proxy in ("nginx", "ingress-nginx"):
        url, original_method = _one(headers, "x-original-url"), _one(headers, "x-original-method")
        return _from_original_url(url, original_method, request.client_ip)
    if proxy == "traefik":
        method_, proto, host, uri = (
            _one(headers, f"x-forwarded-{name}") for name in ("method", "proto", "host", "uri")
        )
        return _checked(method_, proto, host, uri, request.client_ip)
    # Caddy: forward_auth passes the original Host on unchanged, and sets X-Forwarded-Host from it
    # only for a peer outside its trusted_proxies; behind a trusted load balancer it keeps the
    # client's (red team of issue 14, K). Host is the one no client chooses.
    method_, proto, uri = (_one(headers, f"x-forwarded-{name}") for name in ("method", "proto", "uri"))
    return _checked(method_, proto, _one(headers, "host"), uri, request.client_ip)


_OVERRIDE_HEADERS = frozenset(("x-http-method-override", "x-http-method", "x-method-override"))
# PHP reads a query name with " " or "." (or an unmatched "[") as "_", may drop leading spaces,
# and ends it at a NUL: "?.method=DELETE" is $_GET["_method"] (red team, round 2, finding 2).
# Both readings of a leading space are judged: judging one method too many only refuses.
_PHP_NAME = str.maketrans(" .[", "___")


def method_overrides(uri: str, headers: Headers) -> frozenset[str] | None:
    """The methods the original request's overrides name; ``None`` if one is no method.

    Symfony, Laravel, Rails, Express's method-override and ASP.NET run ``POST`` with
    ``X-HTTP-Method-Override: DELETE`` (or ``?_method=DELETE``) as a ``DELETE``: a rule must judge
    it as one. The proxies pass the client's headers on to the auth request (nginx's subrequest
    carries them, Caddy and Traefik copy them, Envoy forwards those ``allowed_headers`` names), so
    they are the original request's. An override in a form body is out of sight (README).

    Every spelling an app reads as an override counts: CGI and FastCGI (PHP) name a header
    ``HTTP_X_HTTP_METHOD_OVERRIDE`` whether it was sent with ``-`` or ``_``, and PHP reads the
    query names ``.method``, `` method``, ``[method`` as ``_method``.
    """
    names: list[str] = []
    for key in headers.keys():  # noqa: SIM118  (RSGIHeaders has keys(), no __iter__)
        if key.lower().replace("_", "-") in _OVERRIDE_HEADERS:
            names += (v for value in headers.get_all(key) for v in value.split(","))
    _, mark, query = uri.partition("?")
    if mark and "method" in unquote_plus(query):
        for key, value in parse_qsl(query, keep_blank_values=True):
            name = key.split("\0", 1)[0]
            if "_method" in (name.translate(_PHP_NAME), name.lstrip(" ").translate(_PHP_NAME)):
                names.append(value)
    # An empty value overrides nothing anywhere; anything else must be a method.
    methods = frozenset(name.strip().upper() for name in names if name.strip())
    return None if any(canonical.method(m) is None for m in methods) else methods


def _from_envoy(request: Original, headers: Headers) -> Original | None:
    """``path_prefix: /validate``: Envoy asks about ``/validate<original path>``, method and Host kept.

    granian hands the path over percent-decoded (RSGI has no raw path): ``%3F`` arrives as ``?``,
    which would end the path early, and ``%23`` as ``#`` (red team of issue 14, F). The query
    comes apart, so a ``?`` or ``#`` in the path can only have been encoded: refused. Decoding
    cannot be undone for the rest either (``%2F`` is ``/``, ``%25`` is ``%``, ``%2E`` is ``.``),
    but each of those only adds slashes, dots and escapes that the readings resolve as the app
    would after decoding (``canonical.readings``); what decodes to an escape it refuses
    (``%252F``) stays refused.
    """
    proto, host = _one(headers, "x-forwarded-proto"), _one(headers, "host")
    if not request.uri.startswith("/validate/") or not proto or not host:
        return None
    return _checked(request.method, proto, host, request.uri[len("/validate") :], request.client_ip)


def _one(headers: Headers, name: str) -> str | None:
    """A header the proxy sets exactly once; repeated means it did not overwrite the client's."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 and values[0] else None


def _checked(method: str | None, scheme: str | None, host: str | None, uri: str | None, client: str) -> Original | None:
    if not method or canonical.method(method) is None or scheme not in ("http", "https"):
        return None
    if not host or not uri or canonical.hostname(host) is None or canonical.uri(uri) is None:
        return None
    return Original(method, scheme, host, uri, client)


def _from_original_url(url: str | None, method: str | None, client: str) -> Original | None:
    """``scheme://host/path?query`` split the one way: the host ends at the first ``/``."""
    scheme, sep, rest = (url or "").partition("://")
    if not sep or method is None:
        return None
    slash = rest.find("/")
    if slash < 0:
        return None
    return _checked(method, scheme.lower(), rest[:slash], rest[slash:], client)


def _guess(request: Original, headers: Headers) -> Original | None:
    """No proxy configured: the first convention present, for the return URL only (see above)."""

    def first(name: str) -> str | None:
        value = headers.get(name)
        return value.strip() if value else None

    method, scheme, host, uri, client, _ = request
    proto = first("x-forwarded-proto") or scheme
    if uri.startswith("/validate/"):
        return _checked(method, proto, host, uri[len("/validate") :], client)
    if url := first("x-original-url"):
        return _from_original_url(url, first("x-original-method") or "GET", client)
    if (forwarded_uri := first("x-forwarded-uri")) or first("x-forwarded-host"):
        forwarded_host = first("x-forwarded-host") or host
        return _checked(first("x-forwarded-method") or method, proto, forwarded_host, forwarded_uri or "/", client)
    if original_uri := first("x-original-uri"):
        return _checked(method, proto, host, original_uri, client)
    return _checked(*request[:5])
