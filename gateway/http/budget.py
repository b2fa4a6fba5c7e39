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
lookups *wait their turn*: credentials proved by their signature before raw ones (anyone can
make up a raw token; only Better Auth makes signed ones, one per sign-in), each line the newest
first (under a flood, the oldest waiters are the likeliest to have been given up on). Signed
credentials are told apart by their token, however spelled (``tokens.Proof``): a token that has
not had a turn lately (``tried_for_s``) goes before one that had and found no valid session, and
among those, the token first seen latest goes first, so replaying tokens it sent before (signed-out
sessions' cookies, in any spelling, on any number of connections) never gets an address ahead of
a valid session not yet cached: only signed tokens it never sent before can, each from a sign-in
of its own, brought faster than one a refill. A full line (``max_waiting``) pushes out the last in
that order. Only a lookup that gets no turn within ``max_wait_s``,
or is pushed out of a full line, is refused, with 429 ("try again"), never 401: its credential was
never judged. Nothing that needs no lookup ever waits or is refused; concurrent lookups of one
token share one turn (``Tiers.joinable``).

**Who is an address.** The TCP peer; from a trusted proxy, the right-most ``X-Forwarded-For`` hop
that is not a trusted proxy (``X-Real-IP`` is never believed: a proxy that doesn't set it passes
the client's own). An IPv6 address counts by its /64 (``ipv6_prefix``): one host is given a /64 to
rotate in. An IPv4-mapped IPv6 address, and a NAT64 one (``64:ff9b::/96``, RFC 6052: a
NAT64/SIIT ingress presents every IPv4 client so), is its IPv4 address. A trusted peer that sends no
``X-Forwarded-For`` is its own client (an internal caller); every proxy in ``examples/`` sends one.

Accounts live in an LRU: a flood of addresses can't grow memory past ``max_clients``; the hashes
of tokens tried lately in one bounded by ``max_tried``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from gateway.core.lru import LRU
from gateway.core.networks import parse_ip
from gateway.http.addresses import forwarded_client, network_key, trusted

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.core.networks import Network


class _Account:
    """One address's bucket and the lookups waiting for a token."""

    __slots__ = ("raw", "signed", "stamp", "timer", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.signed: deque[tuple[str, asyncio.Future[bool]]] = deque()  # with their token's hash
        self.raw: deque[asyncio.Future[bool]] = deque()
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
        tried_for_s: float = 3600.0,
        max_tried: int = 100_000,
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
        # Hashes of signed tokens that had a turn lately and found no valid session (or are being
        # looked up): each token gets one turn ahead of the others, however it is spelled or
        # however often it is sent. A session Better Auth deleted never comes back; a banned one
        # may, and still gets turns, after the untried tokens.
        self._tried: LRU[bool] = LRU(max_tried, time.monotonic)
        # When each signed token first asked for a turn: a token first seen later goes first, so
        # replaying (or respelling) a token the address has sent before never overtakes a new one.
        self._seen: LRU[float] = LRU(max_tried, time.monotonic)
        self._tried_for_s = tried_for_s
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
        one); it picks the line and the place in it. Returns ``False`` if no token came within ``max_wait_s`` or
        the line was full.
        """
        now = time.monotonic()
        account = self._accounts.get(client)
        if account is None:
            account = _Account(self._burst, now)
        self._accounts.put(client, account, now + self._idle_s)
        self._refill(account, now)
        if account.tokens >= 1 and not account.signed and not account.raw:
            account.tokens -= 1
            if signed is not None:
                self._tried.put(signed, True, now + self._tried_for_s)  # noqa: FBT003
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if signed is None:
            account.raw.append(waiter)
            if len(account.raw) > self._max_waiting:
                _refuse(account.raw.popleft())
        else:
            line = account.signed
            line.append((signed, waiter))
            if self._seen.get(signed) is None:
                self._seen.put(signed, now, now + self._tried_for_s)
            if len(line) > self._max_waiting:  # push out the last in rank (the oldest of those)
                ranks = [self._rank(digest) for digest, _ in line]
                index = ranks.index(min(ranks))
                _refuse(line[index][1])
                del line[index]
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
                self.settle(client, spent=False, signed=signed)
        return granted

    def _rank(self, digest: str) -> tuple[bool, float]:
        """A signed token's place in line, highest first: untried, then the latest first seen."""
        return self._tried.get(digest) is None, self._seen.get(digest) or 0.0

    def settle(self, client: str, *, spent: bool, signed: str | None = None) -> None:
        """End a lookup: ``spent`` if it found no valid session, else its token goes back.

        ``signed``: the hash of the signed token looked up: one that found a valid session is
        no longer "tried" (it waits with the untried again).
        """
        if spent:
            return
        if signed is not None:  # a valid session's token: new again
            self._tried.pop(signed)
            self._seen.pop(signed)
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
        now = time.monotonic()
        self._refill(account, now)
        signed, raw = account.signed, account.raw
        while signed and account.tokens >= 1:
            index = self._next_signed(signed)
            digest, waiter = signed[index]
            del signed[index]
            if not waiter.done():
                account.tokens -= 1
                self._tried.put(digest, True, now + self._tried_for_s)  # noqa: FBT003
                waiter.set_result(True)
        while raw and account.tokens >= 1:
            waiter = raw.pop()  # the newest first
            if not waiter.done():
                account.tokens -= 1
                waiter.set_result(True)
        if (signed or raw) and account.timer is None:
            delay = (1 - account.tokens) / self._rate
            account.timer = asyncio.get_running_loop().call_later(delay, self._wake, client, account)

    def _next_signed(self, line: deque[tuple[str, asyncio.Future[bool]]]) -> int:
        """The index of the next signed waiter: the highest in rank, of those the newest."""
        best, best_rank = 0, (False, -1.0)
        for index, (digest, waiter) in enumerate(line):
            if waiter.done():
                return index  # dropped at no cost
            rank = self._rank(digest)
            if rank >= best_rank:
                best, best_rank = index, rank
        return best

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


def _refuse(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
