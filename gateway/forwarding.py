"""The original request behind a forward-auth call, from what each proxy sends. No I/O.

``reference/forward-auth.md`` §6.2, in this order:

1. ``/validate/<path>`` (Envoy's ``path_prefix``): the method is the request's, the path the sub-path;
2. ``X-Original-URL`` + ``X-Original-Method`` (nginx, ingress-nginx, Authelia's convention);
3. ``X-Forwarded-Proto/Host/Uri/Method`` (Traefik, Caddy, oauth2-proxy's convention);
4. ``X-Original-URI`` + ``Host``;
5. the request itself.

Forwarded headers count only when the TCP peer is a trusted proxy (``GATEWAY_TRUSTED_PROXIES``,
loopback by default); from anyone else they are ignored. The client IP is the right-most
``X-Forwarded-For`` entry that is not a trusted proxy, else ``X-Real-IP``, else the peer.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Original(NamedTuple):
    """The request a proxy asks about."""

    method: str
    scheme: str
    host: str
    uri: str  # path and query
    client_ip: str

    @property
    def url(self) -> str:
        """The absolute URL, as a browser would go back to it."""
        return f"{self.scheme}://{self.host}{self.uri}"

    @property
    def path(self) -> str:
        """The path, without the query."""
        return self.uri.split("?", 1)[0]


def parse_networks(text: str) -> tuple[Network, ...]:
    """Parse ``"127.0.0.0/8, ::1, 10.0.0.0/8"``; raise ``ValueError`` naming a bad entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> Address | None:
    """An address from an ``X-Forwarded-For`` entry or a peer string (``ip:port``, ``[v6]:port``).

    Memoised: the same few peers and hops come back on every request, and ``ipaddress`` parsing
    costs several microseconds (bounded, so forged headers cannot grow it).
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def trusted(address: Address | None, networks: Sequence[Network]) -> bool:
    """Whether an address is one of the trusted proxies."""
    return address is not None and any(address in net for net in networks)


def original_request(  # noqa: PLR0913  (the request's parts, each named)
    *,
    method: str,
    scheme: str,
    path: str,
    query: str,
    peer: str,
    header: Callable[[str], str | None],
    networks: Sequence[Network],
) -> Original:
    """Work out the original request of a forward-auth call (see the module docstring)."""
    peer_ip = parse_ip(peer)
    trust = trusted(peer_ip, networks)

    def fwd(name: str) -> str | None:
        value = header(name) if trust else None
        return value.split(",", 1)[0].strip() if value else None

    host = header("host") or ""
    client = client_ip(peer_ip, header, networks) if trust else str(peer_ip or "")
    proto = fwd("x-forwarded-proto") or scheme
    if path.startswith("/validate/"):
        return Original(method, proto, host, path[len("/validate") :] + (f"?{query}" if query else ""), client)
    if url := fwd("x-original-url"):
        parts = urlsplit(url)
        uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Original(fwd("x-original-method") or "GET", parts.scheme or proto, parts.netloc or host, uri, client)
    if fwd("x-forwarded-uri") or fwd("x-forwarded-host"):
        uri = fwd("x-forwarded-uri") or "/"
        return Original(fwd("x-forwarded-method") or method, proto, fwd("x-forwarded-host") or host, uri, client)
    if original_uri := fwd("x-original-uri"):
        return Original(method, proto, host, original_uri, client)
    return Original(method, scheme, host, path + (f"?{query}" if query else ""), client)


def request_client(peer: str, header: Callable[[str], str | None], networks: Sequence[Network]) -> str:
    """The client of a request: from the forwarding headers if the peer is a trusted proxy."""
    address = parse_ip(peer)
    return client_ip(address, header, networks) if trusted(address, networks) else str(address or peer)


def client_ip(peer: Address | None, header: Callable[[str], str | None], networks: Sequence[Network]) -> str:
    """The right-most untrusted hop of ``X-Forwarded-For``, else ``X-Real-IP``, else the peer."""
    hops = [parse_ip(h) for h in (header("x-forwarded-for") or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop is not None and not trusted(hop, networks):
            return str(hop)
    if hops and hops[0] is not None:  # every hop is a trusted proxy: the first is the client
        return str(hops[0])
    real = parse_ip(header("x-real-ip") or "")
    return str(real or peer or "")
