"""The RSGI adapter: routes, reading requests, writing verdicts. Decides nothing itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

import msgspec

from gateway import responses
from gateway.config import load_settings
from gateway.cookie_cache import data_cookie
from gateway.forward_auth import ForwardAuth
from gateway.forwarding import parse_networks, request_client
from gateway.logs import DecisionLog, configure_logging
from gateway.metrics import CONTENT_TYPE
from gateway.ratelimit import FailureLimiter
from gateway.resources import Resources, open_resources
from gateway.sessions import Reason
from gateway.tokens import Credential, Kind, find_credential, header_credential

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.sessions import Verdict

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
        self._networks = parse_networks(settings.trusted_proxies)
        self._limiter = FailureLimiter(
            settings.rate_limit_per_minute, settings.rate_limit_burst, parse_networks(settings.rate_limit_exempt)
        )
        self._forward_auth = ForwardAuth(settings, lambda: self.resources, self._log, self._limiter)
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
        h = scope.headers
        cookie = h.get("cookie")
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
        if verdict is None:
            return self._rate_limited(scope, proto)
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
        if verdict is None:
            return self._rate_limited(scope, proto)
        self._count(verdict.reason, credential, started)
        if verdict.reason is Reason.backend_unavailable:
            body = responses.error("unavailable", verdict.reason)
            return proto.response_bytes(503, self._deny.json_unavailable, body)
        token = res.decider.verifier.token(credential) if credential is not None else None
        if verdict.session is None or not isinstance(token, str):
            return proto.response_bytes(200, _NULL_SESSION, b"null")
        return proto.response_bytes(200, _NULL_SESSION, responses.better_auth_session(verdict.session, token))

    def _client(self, scope: Scope) -> str:
        return request_client(scope.client, scope.headers.get, self._networks)

    async def _decide(self, scope: Scope, credential: Credential | None, *, allow_jwt: bool = False) -> Verdict | None:
        """The verdict, counted against the client's failure budget; ``None`` if it has none left."""
        client = self._client(scope)
        if self._limiter.retry_after(client):
            return None
        verdict = await self.resources.decider.decide(credential, allow_jwt=allow_jwt)
        self._limiter.record(client, verdict.reason)
        return verdict

    def _rate_limited(self, scope: Scope, proto: HTTPProtocol) -> None:
        self.resources.metrics.decision("rate_limited")
        wait = math.ceil(self._limiter.retry_after(self._client(scope)))
        headers = [*_JSON, responses.NO_STORE, ("retry-after", str(max(1, wait)))]
        proto.response_bytes(429, headers, responses.error("rate_limited", "too many failed validations"))

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


def create_app() -> App:
    """Build the app from the environment: granian's factory, called once in each worker."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return App(settings)
