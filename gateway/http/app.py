"""The RSGI adapter: routes, reading requests, writing verdicts. Decides nothing itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, cast

import msgspec

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.cookie_cache import data_cookie
from gateway.credentials.tokens import Credential, Kind, cookie_header, find_credential, header_credential
from gateway.http import policy, responses
from gateway.http.budget import Budget
from gateway.http.forward_auth import ForwardAuth
from gateway.resources import Resources, open_resources
from gateway.telemetry.logs import DecisionLog, configure_logging
from gateway.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.core.sessions import Verdict
    from gateway.credentials.tokens import Headers

    Handler = Callable[[Scope, HTTPProtocol], Awaitable[None]]

log = logging.getLogger("gateway")
_JSON = [responses.JSON_TYPE]
_BODY_TIMEOUT = [responses.JSON_TYPE, ("connection", "close")]
_NULL_SESSION = [responses.JSON_TYPE, responses.NO_STORE, ("pragma", "no-cache")]


class _Body(msgspec.Struct):
    token: str | None = None


_BODY = msgspec.json.Decoder(_Body)


class App:
    """The gateway as an RSGI application; granian calls ``__rsgi_init__`` in each worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._names = settings.cookie_names
        self._data_names = settings.data_cookie_names if settings.cookie_cache != "off" else ()
        self._deny = responses.Denials(settings.retry_after_s)
        self._log = DecisionLog(settings.log_decisions_sample)
        self._budget = budget_from(settings)
        self._rate_limited_headers = [*_JSON, responses.NO_STORE, ("retry-after", str(self._budget.retry_after_s))]
        self._forward_auth = ForwardAuth(settings, lambda: self.resources, self._log, self._budget)
        self._stack = contextlib.AsyncExitStack()
        self._res: Resources | None = None
        self._routes: dict[str, tuple[frozenset[str] | None, Handler]] = {
            "/validate": (None, self._validate),
            "/v1/validate": (frozenset({"POST"}), self._api_validate),
            "/api/auth/get-session": (frozenset({"GET", "HEAD"}), self._get_session),
            "/healthz": (frozenset({"GET", "HEAD"}), self._healthz),
            "/readyz": (frozenset({"GET", "HEAD"}), self._readyz),
            "/metrics": (frozenset({"GET", "HEAD"}), self._metrics),
        }

    async def open(self) -> None:
        """Open the worker's resources."""
        self._res = await self._stack.enter_async_context(open_resources(self.settings))

    async def close(self) -> None:
        """Close them, in reverse order."""
        await self._stack.aclose()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.open())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.close())

    @property
    def resources(self) -> Resources:
        """The open resources; using them before ``open`` is a bug, said precisely."""
        if self._res is None:
            msg = "the gateway's resources are not open: __rsgi_init__/open() has not run"
            raise RuntimeError(msg)
        return self._res

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        path = scope.path
        if path == "/validate":
            headers = self._forward_auth.hit(scope)
            if headers is not None:
                return proto.response_empty(200, headers)
        route = self._routes.get(path)
        if route is None:
            if path.startswith("/validate/"):  # Envoy's path_prefix form
                return await self._validate(scope, proto)
            return proto.response_bytes(404, _JSON, responses.error("not_found", "no such endpoint"))
        methods, handler = route
        if methods is not None and scope.method not in methods:
            headers = [*_JSON, ("allow", ", ".join(sorted(methods)))]
            return proto.response_bytes(405, headers, responses.error("method_not_allowed", scope.method))
        return await handler(scope, proto)

    def _credential(self, scope: Scope) -> Credential | None:
        h = cast("Headers", scope.headers)  # granian's stub lacks get_all, which it has
        cookie = cookie_header(h)
        credential = find_credential(h.get("authorization"), h.get("x-session-token"), cookie, self._names)
        if self._data_names and credential is not None and credential.kind is Kind.cookie and cookie is not None:
            return credential._replace(cached=data_cookie(cookie, self._data_names))
        return credential

    async def _validate(self, scope: Scope, proto: HTTPProtocol) -> None:
        await self._forward_auth(scope, proto, self._credential(scope))

    async def _api_validate(self, scope: Scope, proto: HTTPProtocol) -> None:
        body = await self._read_body(scope, proto)
        if body is None:
            return None
        try:
            token = _BODY.decode(body).token if body.strip() else None
        except msgspec.DecodeError as exc:
            return proto.response_bytes(400, _JSON, responses.error("bad_request", str(exc)))
        credential = header_credential(token) if token else self._credential(scope)
        started = time.perf_counter()
        verdict = await self._decide(scope, credential, allow_jwt=True)
        if verdict.reason is Reason.rate_limited:
            return self._rate_limited(proto)
        self._count(verdict.reason, credential, started)
        if verdict.session is not None:
            return proto.response_bytes(200, _JSON, responses.identity(verdict.session))
        reason = verdict.reason
        if reason is Reason.backend_unavailable:
            return proto.response_bytes(503, self._deny.json_unavailable, responses.error("unavailable", reason))
        body = responses.error("unauthorized", reason)
        return proto.response_bytes(401, self._deny.json_unauthenticated[reason], body)

    async def _read_body(self, scope: Scope, proto: HTTPProtocol) -> bytes | None:
        """Read at most ``max_body_bytes``; answer 413 and return ``None`` beyond that."""
        limit = self.settings.max_body_bytes
        declared = scope.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            proto.response_bytes(status, _JSON, responses.error("bad_request", f"body limit is {limit} bytes"))
            return None
        chunks, size = [], 0
        try:
            # The header timeout ends once the head is read: without this a client trickling its
            # body a byte at a time would hold the connection (and a worker's slot) forever.
            async with asyncio.timeout(self.settings.body_read_timeout_s):
                async for chunk in proto:
                    size += len(chunk)
                    if size > limit:
                        body = responses.error("bad_request", f"body limit is {limit} bytes")
                        proto.response_bytes(413, _JSON, body)
                        return None
                    chunks.append(chunk)
        except TimeoutError:
            body = responses.error("request_timeout", "the body did not arrive in time")
            proto.response_bytes(408, _BODY_TIMEOUT, body)
            return None
        return b"".join(chunks)

    async def _get_session(self, scope: Scope, proto: HTTPProtocol) -> None:
        """Better Auth's get-session, read-only: the same JSON, or ``null`` with status 200."""
        credential = self._credential(scope)
        res = self.resources
        started = time.perf_counter()
        verdict = await self._decide(scope, credential)
        if verdict.reason is Reason.rate_limited:
            return self._rate_limited(proto)
        self._count(verdict.reason, credential, started)
        if verdict.reason is Reason.backend_unavailable:
            body = responses.error("unavailable", verdict.reason)
            return proto.response_bytes(503, self._deny.json_unavailable, body)
        token = res.decider.verifier.token(credential) if credential is not None else None
        if verdict.session is None or not isinstance(token, str):
            return proto.response_bytes(200, _NULL_SESSION, b"null")
        return proto.response_bytes(200, _NULL_SESSION, responses.better_auth_session(verdict.session, token))

    def _decide(
        self, scope: Scope, credential: Credential | None, *, allow_jwt: bool = False
    ) -> Coroutine[None, None, Verdict]:
        """The verdict; a lookup it needs waits for its turn in the address's failure budget."""
        turn = self._budget.turn(scope.client, scope.headers.get) if self._budget.enabled else None
        return self.resources.decider.decide(credential, allow_jwt=allow_jwt, turn=turn)

    def _rate_limited(self, proto: HTTPProtocol) -> None:
        self.resources.metrics.decision(Reason.rate_limited)
        body = responses.error("rate_limited", "too many failed lookups from this address: try again")
        proto.response_bytes(429, self._rate_limited_headers, body)

    def _count(self, reason: Reason, credential: Credential | None, started: float) -> None:
        self.resources.metrics.decision(reason)
        self._log.record(reason, credential, started)

    async def _metrics(self, _: Scope, proto: HTTPProtocol) -> None:
        proto.response_bytes(200, [("content-type", CONTENT_TYPE)], self.resources.metrics.exposition())

    async def _healthz(self, _: Scope, proto: HTTPProtocol) -> None:
        proto.response_bytes(200, _JSON, b'{"status":"ok"}')

    async def _readyz(self, _: Scope, proto: HTTPProtocol) -> None:
        ready = await self.resources.pings()
        status = 503 if ready.failing else 200
        proto.response_bytes(status, [*_JSON, responses.NO_STORE], responses.JSON.encode(ready._asdict()))


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


def create_app() -> App:
    """Build the app from the environment: granian's factory, called once in each worker."""
    settings = load_settings(checks=(policy.rules_file_problems,))
    configure_logging(settings.log_level, settings.log_format)
    return App(settings)
