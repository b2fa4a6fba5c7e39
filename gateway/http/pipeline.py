"""One request's way through the core, written once for every endpoint that decides.

``/validate``, ``/v1/validate`` and get-session all go: find the credential (once: the Cookie
header's session cookie is read once, Better Auth's cookie cache only when a lookup may need it)
→ the core's fast path, a cached session (``Decider.cached``: no HMAC, no I/O, no coroutine;
``/validate`` only) → else a turn in the address's failure budget, if a lookup is needed, and the
decision (the credential checked at most once, its token carried by the verdict) → the answer,
counted and logged once → sent.

The parts the pipeline serves from come from outside (``Parts``, opened by an ``Opener``): the
HTTP adapter never imports the composition root that wires them (``gateway.resources``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from gateway.credentials.api_keys import api_key_credential
from gateway.credentials.cookie_cache import data_cookie
from gateway.credentials.tokens import Kind, cookie_header, find_credential
from gateway.http.budget import Budget
from gateway.http.observing import Observer
from gateway.telemetry.logs import DecisionLog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.core.sessions import Verdict
    from gateway.credentials.tokens import Credential, Headers
    from gateway.lookup.decision import Decider
    from gateway.lookup.tiers import Entry
    from gateway.telemetry.metrics import Metrics

    # Opens a worker's parts for its settings, closes them on exit (``gateway.resources.open_resources``).
    Opener = Callable[[Settings], AbstractAsyncContextManager["Parts"]]


class Readiness(Protocol):
    """What ``Parts.pings`` reports (``gateway.resources.Readiness``)."""

    @property
    def failing(self) -> Mapping[str, str]:
        """The parts that fail readiness, each with why."""
        ...

    def _asdict(self) -> dict[str, Any]: ...


class Parts(Protocol):
    """What the HTTP adapter serves from, opened once per worker (``gateway.resources.Resources``)."""

    @property
    def decider(self) -> Decider:
        """The decision core."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The worker's metrics."""
        ...

    def pings(self) -> Awaitable[Readiness]:
        """Ping every dependency, for ``/readyz``."""
        ...


class Answer(NamedTuple):
    """An endpoint's answer to a decided request, and the label it is counted and logged under."""

    status: int
    headers: list[tuple[str, str]]
    label: str
    body: bytes | None = None  # None: an empty response (forward auth)


class KnownCookies:
    """Cookie headers whose session cookie was found cached, each with its credential: the hit path's memo.

    ``find_credential`` remembers the last 4,096 Cookie headers it read, whatever they held (it
    must stay small: anyone can send headers). Under more live sessions than that, every cookie
    hit read its header again. This memo is as large as the L1 but admits a header only when its
    credential's key is cached there, i.e. was checked (only checked home keys are cached):
    forged, unknown or respelled cookies never enter it. A header maps only to the credential
    ``find_credential`` read from exactly those bytes, and the L1 still decides every request,
    so a revoked or evicted session is never answered from here. One header per credential key
    (a client that varies its other cookies replaces its own header, never grows the memo), and
    headers longer than ``MAX_LENGTH`` are not kept: at most ``max_entries`` short headers.
    """

    MAX_LENGTH = 2048

    __slots__ = ("_by_key", "_credentials", "_max")

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._credentials: dict[str, Credential] = {}  # Cookie header → its credential, oldest first
        self._by_key: dict[str, str] = {}  # a credential key → the one header kept for it

    def get(self, header: str) -> Credential | None:
        """The credential remembered for exactly this Cookie header, if any."""
        return self._credentials.get(header)

    def add(self, header: str, credential: Credential) -> None:
        """Remember ``credential`` (which the caller found cached) for ``header``, replacing its key's last."""
        if len(header) > self.MAX_LENGTH or self._max <= 0:
            return
        credentials = self._credentials
        previous = self._by_key.pop(credential.key, None)
        if previous is not None:
            del credentials[previous]
        elif len(credentials) >= self._max:
            del self._by_key[credentials.pop(next(iter(credentials))).key]
        credentials[header] = credential
        self._by_key[credential.key] = header

    def __len__(self) -> int:
        return len(self._credentials)


_NOT_OPEN = "the gateway's resources are not open: __rsgi_init__/open() has not run"


def _not_open(_: str) -> Entry | None:
    raise RuntimeError(_NOT_OPEN)


def _nowhere(_: str) -> bool:
    return False


class Pipeline:
    """The request pipeline of one worker: credential, fast path, budget, decision, count, log."""

    def __init__(self, settings: Settings) -> None:
        self.budget = budget_from(settings)
        self.log = DecisionLog(settings.log_decisions_sample)
        self.observer = Observer(settings)  # request IDs, latency, in flight, the access log
        self._names = settings.cookie_names
        self._data_names = settings.data_cookie_names if settings.cookie_cache != "off" else ()
        # The API key plugin's headers (GATEWAY_API_KEYS=on): read before any session credential.
        self.api_key_names = settings.api_key_headers if settings.api_keys == "on" else ()
        self._parts: Parts | None = None
        self._in_l1: Callable[[str], bool] = _nowhere  # whether the L1 holds a key (``KnownCookies``)
        self.known_cookies = KnownCookies(settings.l1_max_entries)
        # The fast path, bound once the parts are open: one call, no lookups, on every hit.
        self.cached: Callable[[str], Entry | None] = _not_open

    def bind(self, parts: Parts) -> None:
        """Serve from ``parts`` (once they are open)."""
        self._parts = parts
        self._in_l1 = parts.decider.tiers.l1.__contains__
        self.cached = parts.decider.cached
        self.observer.bind(parts.metrics)

    @property
    def parts(self) -> Parts:
        """The open parts; using them before ``bind`` is a bug, said precisely."""
        if self._parts is None:
            raise RuntimeError(_NOT_OPEN)
        return self._parts

    def find(self, headers: Headers, authorization: str | None) -> Credential | None:
        """The request's credential, in Better Auth's order, without the cookie cache's value.

        ``authorization``: the request's Authorization header, which the caller has read already.
        """
        if self.api_key_names:  # the plugin's hook runs before Better Auth reads a session
            key = api_key_credential(headers, self.api_key_names)
            if key is not None:
                return key
        session_header = headers.get("x-session-token")
        cookie = cookie_header(headers)
        if cookie is None or session_header or (authorization is not None and authorization[:7].lower() == "bearer "):
            return find_credential(authorization, session_header, cookie, self._names)
        credential = self.known_cookies.get(cookie)
        if credential is None:
            credential = find_credential(None, None, cookie, self._names)
            if credential is not None and self._in_l1(credential.key):
                self.known_cookies.add(cookie, credential)
        return credential

    def with_cookie_cache(self, credential: Credential | None, headers: Headers) -> Credential | None:
        """Add Better Auth's cookie cache value to a session cookie, when the cookie cache is on."""
        if not self._data_names or credential is None or credential.kind is not Kind.cookie:
            return credential
        cookie = cookie_header(headers)
        return credential if cookie is None else credential._replace(cached=data_cookie(cookie, self._data_names))

    def credential(self, headers: Headers) -> Credential | None:
        """The request's credential, with what the decision may need (``find``, ``with_cookie_cache``)."""
        return self.with_cookie_cache(self.find(headers, headers.get("authorization")), headers)

    def decide(
        self, scope: Scope, credential: Credential | None, *, allow_jwt: bool = False, need_token: bool = False
    ) -> Awaitable[Verdict]:
        """The verdict; a lookup it needs waits for its turn in the address's failure budget."""
        turn = self.budget.turn(scope.client, scope.headers.get) if self.budget.enabled else None
        verdict = self.parts.decider.decide(credential, allow_jwt=allow_jwt, turn=turn, need_token=need_token)
        return self.observer.watch(verdict) if self.observer.access.enabled else verdict

    async def answer(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        credential: Credential | None,
        respond: Callable[[Scope, Credential | None], Awaitable[Answer]],
    ) -> None:
        """Answer a request with ``respond`` (which decides, through ``decide``); count and log it once."""
        started = time.perf_counter()
        request, context = self.observer.begin(scope)
        try:
            status, headers, label, body = await respond(scope, credential)
        finally:
            self.observer.end(context)
        self.parts.metrics.decision(label)
        if self.log.enabled:
            self.log.record(label, credential, started, request)
        headers = self.observer.done(scope, request, status=status, headers=headers, reason=label, started=started)
        if body is None:
            return proto.response_empty(status, headers)
        return proto.response_bytes(status, headers, body)


def budget_from(settings: Settings) -> Budget:
    """The failure budget the settings describe (``gateway.http.budget``)."""
    return Budget(
        settings.rate_limit_per_minute,
        settings.rate_limit_burst,
        proxies=settings.trusted_proxies,
        exempt=settings.rate_limit_exempt,
        ipv4_prefix=settings.rate_limit_ipv4_prefix,
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
        max_wait_s=settings.rate_limit_max_wait_s,
        max_waiting=settings.rate_limit_max_waiting,
    )
