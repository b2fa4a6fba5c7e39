"""Client addresses: trusted networks, peers, ``X-Forwarded-For`` and the network one counts as. No I/O.

Forwarded headers count only when the TCP peer is a trusted proxy (``GATEWAY_TRUSTED_PROXIES``,
loopback by default). The client is then the right-most ``X-Forwarded-For`` hop that is not a
trusted proxy, else the peer; ``X-Real-IP`` is never believed (a proxy that doesn't set it passes
the client's own on).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING

from gateway.core.networks import parse_ip

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.core.networks import Address, Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def trusted(address: Address | None, networks: Sequence[Network]) -> bool:
    """Whether an address is one of the trusted proxies."""
    if address is not None:
        for net in networks:  # a loop, not any(): every forward-auth request asks, mostly of one network
            if address in net:
                return True
    return False


def client_ip(peer: Address | None, header: Callable[[str], str | None], networks: Sequence[Network]) -> str:
    """The right-most untrusted hop of ``X-Forwarded-For``, else the peer (``X-Real-IP`` is anyone's)."""
    return str(forwarded_client(header("x-forwarded-for"), networks) or peer or "")


def forwarded_client(value: str | None, proxies: Sequence[Network]) -> Address | None:
    """The right-most ``X-Forwarded-For`` hop that is not a trusted proxy.

    Each proxy appends the address it was called from, so reading from the right, every hop up
    to the first untrusted one was written by a trusted proxy, and that one is the client. Text
    that is no address was not written by a proxy: the hop to its right sent it. With every hop
    trusted, the left-most is the client (an internal caller).
    """
    nearest = None
    for hop in reversed(value.split(",")) if value else ():
        address = parse_ip(hop)
        if address is None:
            break
        if not trusted(address, proxies):
            return address
        nearest = address
    return nearest


@functools.lru_cache(maxsize=4096)
def network_key(address: Address, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network an address counts as: its /64 for IPv6 (by default), itself for IPv4.

    Memoised: the same addresses come back, and ``ipaddress`` arithmetic costs microseconds.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:  # the client's IPv4 address, in the last 32 bits
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    prefix = ipv4_prefix if isinstance(address, ipaddress.IPv4Address) else ipv6_prefix
    if prefix >= address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
