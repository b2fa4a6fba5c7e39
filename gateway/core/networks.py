"""IP addresses and networks: parsed once from configuration, and from peers as requests arrive."""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
