"""What operators see of a request the pipeline decides: its ID, latency, in-flight count, access line.

The pipeline calls ``begin`` before deciding and ``done`` after; the hit paths (no coroutine)
do neither: each times itself into its endpoint's ``l1`` child of the histogram (``App``), is
not counted in flight (it never waits), and, only when the access log (``GATEWAY_ACCESS_LOG``)
or the echoed ``X-Request-ID`` (``GATEWAY_REQUEST_ID_HEADER``) asks (``observed``), takes an ID
(``hit_request``), echoes it (``echoed``) and logs its line (``hit``): the same line and header
the pipeline would have made, with no task, no context variable and no ``logging`` call per hit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from gateway.core.sessions import Reason
from gateway.http.original import original_target
from gateway.telemetry.access import AccessLog
from gateway.telemetry.requests import CURRENT, Request

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from contextvars import Token

    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.core.sessions import Verdict
    from gateway.credentials.tokens import Headers
    from gateway.telemetry.metrics import Metrics

_OK = str(Reason.ok)  # a hit's reason, as the pipeline writes an L1 hit's
_ENDPOINTS = {"/validate": "validate", "/v1/validate": "v1_validate", "/api/auth/get-session": "get_session"}


class Observer:
    """One worker's observation of decided requests (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.access = AccessLog(enabled=settings.access_log == "on")
        self._echo = settings.request_id_header == "on"
        self.observed = self.access.enabled or self._echo  # what a hit path does more when on
        self._proxy = settings.proxy
        self._networks = settings.trusted_proxies
        self._metrics: Metrics | None = None

    def bind(self, metrics: Metrics) -> None:
        """Count into ``metrics`` (once the worker's parts are open)."""
        self._metrics = metrics

    @staticmethod
    def hit_request(scope: Scope) -> Request:
        """A request's correlation headers (its ID made only if asked for); a hit's is never made current."""
        headers = scope.headers
        return Request(headers.get("x-request-id"), headers.get("traceparent"))

    def echoed(self, headers: list[tuple[str, str]], request: Request) -> list[tuple[str, str]]:
        """``/validate``'s ``headers``, with the request ID when it is echoed (a copy: lists are shared)."""
        return [*headers, ("x-request-id", request.id)] if self._echo else headers

    def hit(self, scope: Scope, request: Request, endpoint: str, user: str, seconds: float) -> None:
        """A hit's access line (a 200, ``ok``, for ``user``), when the access log is on."""
        if self.access.enabled:
            self._line(scope, request, endpoint, user=user, status=200, reason=_OK, seconds=seconds)

    def begin(self, scope: Scope) -> tuple[Request, Token[Request | None]]:
        """A request begins: its context (current until ``end``), counted in flight."""
        request = self.hit_request(scope)
        if self._metrics is not None:
            self._metrics.in_flight += 1
        return request, CURRENT.set(request)

    def end(self, token: Token[Request | None]) -> None:
        """The request's decision is made (or abandoned): no longer in flight."""
        CURRENT.reset(token)
        if self._metrics is not None:
            self._metrics.in_flight -= 1

    async def watch(self, verdict: Awaitable[Verdict]) -> Verdict:
        """``verdict``, once decided, with the user it names noted for the access log."""
        decided = await verdict
        request = CURRENT.get()
        if request is not None and decided.session is not None:
            request.user = decided.session.user_id
        return decided

    def done(  # noqa: PLR0913  (the request and its answer)
        self,
        scope: Scope,
        request: Request,
        *,
        status: int,
        headers: list[tuple[str, str]],
        reason: str,
        started: float,
    ) -> list[tuple[str, str]]:
        """Time, log and (if asked) stamp the answer's headers with the request ID; the headers to send."""
        seconds = time.perf_counter() - started
        path = scope.path
        endpoint = _ENDPOINTS.get(path, "validate")  # else /validate/<path>, Envoy's form
        if self._metrics is not None:
            self._metrics.decision_seconds.observe(endpoint, request.tier, seconds)
        if self.access.enabled:
            self._line(scope, request, endpoint, user=request.user, status=status, reason=str(reason), seconds=seconds)
        return self.echoed(headers, request) if endpoint == "validate" else headers

    def _line(  # noqa: PLR0913  (the request and its answer)
        self, scope: Scope, request: Request, endpoint: str, *, user: str, status: int, reason: str, seconds: float
    ) -> None:
        """The access line of a decided request: a hit's or the pipeline's, the same fields."""
        method, host, path = self._what(scope, endpoint)
        self.access.line(request.id, user, method, host, path, status, reason, seconds)

    def _what(self, scope: Scope, endpoint: str) -> tuple[str, str, str]:
        """Method, host and path (never the query) of what was asked: for forward auth, the original request."""
        headers = cast("Headers", scope.headers)  # granian's stub lacks get_all, which it has
        if endpoint != "validate":
            return scope.method, headers.get("host") or "", scope.path
        original = original_target(
            proxy=self._proxy,
            method=scope.method,
            scheme=scope.scheme,
            path=scope.path,
            query=scope.query_string,
            peer=scope.client,
            headers=headers,
            networks=self._networks,
        )
        return ("", "", "") if original is None else (original.method, original.host, original.path)
