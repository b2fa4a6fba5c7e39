"""The RSGI adapter: routes, a worker's lifecycle, health and metrics. Decides nothing itself.

The parts it serves from are opened by an ``Opener`` it is given (``pipeline.Parts``): the
composition root (``gateway.resources``) wires them and builds the app for granian
(``gateway.resources:create_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from time import perf_counter
from typing import TYPE_CHECKING, cast

from gateway.http import responses
from gateway.http.api import JSON, SESSION, Api
from gateway.http.forward_auth import ForwardAuth
from gateway.http.pipeline import Pipeline
from gateway.lookup.entries import Entry
from gateway.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.credentials.tokens import Headers
    from gateway.http.pipeline import Opener, Parts

    Handler = Callable[[Scope, HTTPProtocol], Awaitable[None]]
    HeaderList = list[tuple[str, str]]


def _unbound(_: float) -> None:
    """Before ``open``: nothing to count into (and the hit path refuses to serve)."""


class App:
    """The gateway as an RSGI application; granian calls ``__rsgi_init__`` in each worker.

    ``opener`` opens the worker's parts for the settings (``gateway.resources.open_resources``).
    """

    def __init__(self, settings: Settings, opener: Opener) -> None:
        self.settings = settings
        self._opener = opener
        self._pipeline = Pipeline(settings)
        self._forward_auth = ForwardAuth(settings, self._pipeline)
        self._api = api = Api(settings, self._pipeline)
        self._stack = contextlib.AsyncExitStack()
        # The latency histogram's l1 children of the hit paths (bound in ``open``).
        self._hit_seconds: Callable[[float], None] = _unbound
        self._session_hit_seconds: Callable[[float], None] = _unbound
        self._observer = observer = self._pipeline.observer
        self._observed = observer.observed  # the access log or the echoed request ID: a hit does more
        self._routes: dict[str, tuple[frozenset[str] | None, Handler]] = {
            "/v1/validate": (frozenset({"POST"}), api.validate),
            "/api/auth/get-session": (frozenset({"GET", "HEAD", "POST"}), api.get_session),  # POST: deferred refresh
            "/healthz": (frozenset({"GET", "HEAD"}), self._healthz),
            "/readyz": (frozenset({"GET", "HEAD"}), self._readyz),
            "/metrics": (frozenset({"GET", "HEAD"}), self._metrics),
        }

    async def open(self) -> None:
        """Open the worker's parts; watch the rules file (reloads) until ``close``."""
        self._pipeline.bind(await self._stack.enter_async_context(self._opener(self.settings)))
        self._observer.access.open(asyncio.get_running_loop())
        self._stack.callback(self._observer.access.close)  # closed first: the last lines are written
        seconds = self.parts.metrics.decision_seconds
        self._hit_seconds = seconds.child("validate", "l1").observe
        self._session_hit_seconds = seconds.child("get_session", "l1").observe
        self._api.identity_hit_seconds = seconds.child("v1_validate", "l1").observe
        await self._stack.enter_async_context(self._forward_auth.watching_rules(self.parts.metrics.event))

    async def close(self) -> None:
        """Close them, in reverse order."""
        await self._stack.aclose()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.open())
        # What the worker holds from now on (modules, settings, pools) lives as long as it does:
        # out of the collector's reach, a full collection no longer walks it. Measured with the L1
        # off: ~45 full collections of ~80k objects in 7 s of load were most of the p99 (18.6 → 4.1
        # ms) and 15 % of req/s (benchmarks/results/tiers-20261130.md).
        gc.collect()
        gc.freeze()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.close())

    @property
    def parts(self) -> Parts:
        """The open parts; using them before ``open`` is a bug, said precisely."""
        return self._pipeline.parts

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:  # noqa: PLR0911  (a hit path per endpoint, then routes)
        path = scope.path
        if path == "/validate":
            started = perf_counter()
            found = self._forward_auth.hit(scope)
            if isinstance(found, Entry):  # a cached session's headers: answered with no coroutine
                if self._observed:
                    return self._observed_hit(scope, proto, found, started)
                proto.response_empty(200, cast("HeaderList", found.headers))
                return self._hit_seconds(perf_counter() - started)
            return await self._forward_auth(scope, proto, found)
        if path == "/api/auth/get-session" and scope.method == "GET":
            started = perf_counter()
            session = self._api.session_hit(scope)
            if isinstance(session, Entry):  # a cached session's body: answered with no coroutine
                proto.response_bytes(200, SESSION, cast("bytes", session.answer))
                seconds = perf_counter() - started
                self._session_hit_seconds(seconds)
                if self._observed:
                    observer = self._observer
                    observer.hit(scope, observer.hit_request(scope), "get_session", session.session.user_id, seconds)
                return None
            return await self._api.get_session(scope, proto, session)
        route = self._routes.get(path)
        if route is None:
            if path.startswith("/validate/"):  # Envoy's path_prefix form
                return await self._envoy(scope, proto)
            return proto.response_bytes(404, JSON, responses.error("not_found", "no such endpoint"))
        methods, handler = route
        if methods is not None and scope.method not in methods:
            headers = [*JSON, ("allow", ", ".join(sorted(methods)))]
            return proto.response_bytes(405, headers, responses.error("method_not_allowed", scope.method))
        return await handler(scope, proto)

    def _observed_hit(self, scope: Scope, proto: HTTPProtocol, entry: Entry, started: float) -> None:
        """``/validate``'s hit with the request ID echoed and the access line written (``observing``)."""
        observer = self._observer
        request = observer.hit_request(scope)
        proto.response_empty(200, observer.echoed(cast("HeaderList", entry.headers), request))
        seconds = perf_counter() - started
        self._hit_seconds(seconds)
        observer.hit(scope, request, "validate", entry.session.user_id, seconds)

    async def _envoy(self, scope: Scope, proto: HTTPProtocol) -> None:
        """``/validate/<original path>``: forward auth with no fast path (the path is the original request's)."""
        credential = self._pipeline.credential(cast("Headers", scope.headers))
        await self._forward_auth(scope, proto, credential)

    async def _metrics(self, _: Scope, proto: HTTPProtocol) -> None:
        proto.response_bytes(200, [("content-type", CONTENT_TYPE)], self.parts.metrics.exposition())

    async def _healthz(self, _: Scope, proto: HTTPProtocol) -> None:
        proto.response_bytes(200, JSON, b'{"status":"ok"}')

    async def _readyz(self, _: Scope, proto: HTTPProtocol) -> None:
        ready = await self.parts.pings()
        status = 503 if ready.failing else 200
        proto.response_bytes(status, [*JSON, responses.NO_STORE], responses.JSON.encode(ready._asdict()))
