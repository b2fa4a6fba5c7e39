"""The failure budget: how much lookup work one client address may cause. No I/O of its own.

**What it protects: the session store.** A forged signature costs nothing (it is checked before
any I/O), nor does a cached session, a token remembered as absent or Better Auth's cookie cache.
What costs a lookup (Redis, then Postgres) is a credential that passed every local check and is in
no cache: a raw bearer token, which can't be checked locally, or a signed one whose session is
unknown, expired, banned or revoked. A lookup that finds no valid session is a *failure*.

**How.** Each address has a token bucket: ``burst`` at once, refilled at ``per_minute``. A lookup
takes a token before it starts and gives it back if it found a valid session, so a valid session
costs its address nothing and the failed lookups one address can cause are at most
``burst + per_minute * minutes``. An address with no token left is never told "no" for it: its
lookups *wait their turn*, in three lines served in order:

1. credentials proved by their signature whose token has not failed a lookup lately
   (``failed_for_s``): only Better Auth makes signed tokens, one per sign-in, so an attacker
   has few of these, and each only once: a valid session not yet cached waits here;
2. signed credentials whose token failed a lookup lately (a signed-out session's cookie, kept
   and replayed: its spellings are one token, ``tokens.Proof``);
3. raw bearer tokens, which anyone can make up.

Each line serves the newest first (under a flood, the oldest waiters are the likeliest to have
been given up on). Only a lookup that gets no turn within ``max_wait_s``, or is pushed out of a
full line (``max_waiting``), is refused, with 429 ("try again"), never 401: its credential was
never judged. Nothing that needs no lookup ever waits or is refused; concurrent lookups of one
token share one turn (``Tiers.joinable``).

**Who is an address.** The TCP peer; from a trusted proxy, the right-most ``X-Forwarded-For`` hop
that is not a trusted proxy (``X-Real-IP`` is never believed: a proxy that doesn't set it passes
the client's own). An IPv6 address counts by its /64 (``ipv6_prefix``): one host is given a /64 to
rotate in. An IPv4-mapped IPv6 address, and a NAT64 one (``64:ff9b::/96``, RFC 6052: a
NAT64/SIIT ingress presents every IPv4 client so), is its IPv4 address. A trusted peer that sends no
``X-Forwarded-For`` is its own client (an internal caller); every proxy in ``examples/`` sends one.

Accounts live in an LRU: a flood of addresses can't grow memory past ``max_clients``; the hashes
of tokens that failed lately in one bounded by ``max_failed``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from gateway.forwarding import forwarded_client, parse_ip, trusted
from gateway.lru import LRU

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.forwarding import Address, Network


class _Account:
    """One address's bucket and the lookups waiting for a token."""

    __slots__ = ("failed", "fresh", "lines", "raw", "stamp", "timer", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.fresh: deque[asyncio.Future[bool]] = deque()  # signed, not failed lately
        self.failed: deque[asyncio.Future[bool]] = deque()  # signed, failed lately
        self.raw: deque[asyncio.Future[bool]] = deque()
        self.lines = (self.fresh, self.failed, self.raw)  # in the order they are served
        self.timer: asyncio.TimerHandle | None = None


class Budget:
    """Per-address token buckets for lookups that find no valid session; see the module docstring."""

    def __init__(  # noqa: PLR0913  (each bound, explicitly)
        self,
        per_minute: float,
        burst: int,
        *,
        proxies: Sequence[Network] = (),
        exempt: Sequence[Network] = (),
        ipv4_prefix: int = 32,
        ipv6_prefix: int = 64,
        max_wait_s: float = 2.0,
        max_waiting: int = 64,
        max_clients: int = 100_000,
        failed_for_s: float = 3600.0,
        max_failed: int = 100_000,
    ) -> None:
        self.enabled = per_minute > 0
        self._rate = per_minute / 60.0
        self._burst = float(max(1, burst))
        self._proxies = tuple(proxies)
        self._exempt = tuple(exempt)
        self._prefixes = (ipv4_prefix, ipv6_prefix)
        self._max_wait_s = max_wait_s
        self._max_waiting = max(1, max_waiting)
        self._accounts: LRU[_Account] = LRU(max_clients, time.monotonic)
        # Hashes of signed tokens whose lookup found no valid session: a session Better Auth
        # deleted never comes back (a banned one may: it still gets turns, after the fresh ones).
        self._failed: LRU[bool] = LRU(max_failed, time.monotonic)
        self._failed_for_s = failed_for_s
        # An account left alone is full again after burst / rate seconds: then it can go.
        self._idle_s = (self._burst / self._rate if self.enabled else 0.0) + max_wait_s

    @property
    def retry_after_s(self) -> int:
        """Seconds after which a refused address has a token again."""
        return max(1, math.ceil(1 / self._rate)) if self.enabled else 1

    def turn(self, peer: str, header: Callable[[str], str | None]) -> Turn:
        """A request's turn at a lookup; its address is worked out only if it needs one."""
        return Turn(self, peer, header)

    def client(self, peer: str, header: Callable[[str], str | None]) -> str | None:
        """The address a request counts against; ``None`` for an exempt one."""
        address = parse_ip(peer)
        if address is not None and trusted(address, self._proxies):
            address = forwarded_client(header("x-forwarded-for"), self._proxies) or address
        if address is None:
            return peer  # not an IP peer (a Unix socket): all of its requests are one client
        if self._exempt and trusted(address, self._exempt):
            return None
        return network_key(address, *self._prefixes)

    async def take(self, client: str, *, signed: str | None) -> bool:
        """Take a token for a lookup by ``client``, waiting for one if needed.

        ``signed``: the hash of the token the credential's signature proved (``None``: a raw
        one); it picks the line. Returns ``False`` if no token came within ``max_wait_s`` or
        the line was full.
        """
        now = time.monotonic()
        account = self._accounts.get(client)
        if account is None:
            account = _Account(self._burst, now)
        self._accounts.put(client, account, now + self._idle_s)
        self._refill(account, now)
        if account.tokens >= 1 and not any(account.lines):
            account.tokens -= 1
            return True
        return await self._wait(client, account, self._line(account, signed))

    def _line(self, account: _Account, signed: str | None) -> deque[asyncio.Future[bool]]:
        if signed is None:
            return account.raw
        return account.fresh if self._failed.get(signed) is None else account.failed

    async def _wait(self, client: str, account: _Account, line: deque[asyncio.Future[bool]]) -> bool:
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        line.append(waiter)
        if len(line) > self._max_waiting:
            pushed_out = line.popleft()
            if not pushed_out.done():
                pushed_out.set_result(False)
        self._serve(client, account)
        granted = False
        try:
            async with asyncio.timeout(self._max_wait_s):
                granted = await waiter
        except TimeoutError:
            pass
        finally:
            # A turn granted just as the wait ended (a timeout, a client gone) goes back.
            if not granted and waiter.done() and not waiter.cancelled() and waiter.result():
                self.settle(client, spent=False)
        return granted

    def settle(self, client: str, *, spent: bool, signed: str | None = None) -> None:
        """End a lookup: ``spent`` if it found no valid session, else its token goes back.

        ``signed``: the hash of the signed token looked up; spent, it waits in the second line
        from now on.
        """
        if spent:
            if signed is not None:
                self._failed.put(signed, True, time.monotonic() + self._failed_for_s)  # noqa: FBT003
            return
        account = self._accounts.get(client)
        if account is None:
            return
        self._refill(account, time.monotonic())
        account.tokens = min(self._burst, account.tokens + 1)
        self._serve(client, account)

    def _refill(self, account: _Account, now: float) -> None:
        account.tokens = min(self._burst, account.tokens + (now - account.stamp) * self._rate)
        account.stamp = now

    def _serve(self, client: str, account: _Account) -> None:
        """Hand the tokens there are to the waiting lookups; wake up when the next one is due."""
        self._refill(account, time.monotonic())
        for line in account.lines:
            while line and account.tokens >= 1:
                waiter = line.pop()  # the newest first
                if not waiter.done():
                    account.tokens -= 1
                    waiter.set_result(True)
        if any(account.lines) and account.timer is None:
            delay = (1 - account.tokens) / self._rate
            account.timer = asyncio.get_running_loop().call_later(delay, self._wake, client, account)

    def _wake(self, client: str, account: _Account) -> None:
        account.timer = None
        self._serve(client, account)

    def __len__(self) -> int:
        return len(self._accounts)


class Turn:
    """One request's turn at a lookup (``decision.Turn``): the address is resolved on first use."""

    __slots__ = ("_budget", "_client", "_header", "_peer", "_signed")

    def __init__(self, budget: Budget, peer: str, header: Callable[[str], str | None]) -> None:
        self._budget = budget
        self._peer = peer
        self._header = header
        self._client: str | None = None
        self._signed: str | None = None

    async def take(self, *, signed: str | None) -> bool:
        """Wait for a token (``Budget.take``); an exempt address always has one."""
        self._signed = signed
        self._client = self._budget.client(self._peer, self._header)
        return self._client is None or await self._budget.take(self._client, signed=signed)

    def settle(self, *, spent: bool) -> None:
        """Give the token back unless the lookup was spent on no valid session."""
        if self._client is not None:
            self._budget.settle(self._client, spent=spent, signed=self._signed)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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
