"""What operators see of a request the pipeline decides: its ID, latency, in-flight count, access line.

The pipeline calls ``begin`` before deciding and ``done`` after; the hit path (no coroutine)
does neither: it times itself into the histogram's ``validate``/``l1`` child (``App``) and, with
nothing to correlate, makes no ID. The access log (``GATEWAY_ACCESS_LOG``) and the echoed
``X-Request-ID`` (``GATEWAY_REQUEST_ID_HEADER``) need every request, so either sends hits down the
pipeline too (``full_path``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from gateway.http.original import original_request
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

_ENDPOINTS = {"/validate": "validate", "/v1/validate": "v1_validate", "/api/auth/get-session": "get_session"}


class Observer:
    """One worker's observation of decided requests (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.access = AccessLog(enabled=settings.access_log == "on")
        self._echo = settings.request_id_header == "on"
        self.full_path = self.access.enabled or self._echo  # what the hit path can't do
        self._proxy = settings.proxy
        self._networks = settings.trusted_proxies
        self._metrics: Metrics | None = None

    def bind(self, metrics: Metrics) -> None:
        """Count into ``metrics`` (once the worker's parts are open)."""
        self._metrics = metrics

    def begin(self, scope: Scope) -> tuple[Request, Token[Request | None]]:
        """A request begins: its context (current until ``end``), counted in flight."""
        headers = scope.headers
        request = Request(headers.get("x-request-id"), headers.get("traceparent"))
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
            method, host, original_path = self._what(scope, endpoint)
            self.access.record(
                request_id=request.id,
                user=request.user,
                method=method,
                host=host,
                path=original_path,
                status=status,
                reason=str(reason),
                seconds=seconds,
            )
        if self._echo and endpoint == "validate":
            return [*headers, ("x-request-id", request.id)]  # a copy: answers share constant lists
        return headers

    def _what(self, scope: Scope, endpoint: str) -> tuple[str, str, str]:
        """Method, host and path (never the query) of what was asked: for forward auth, the original request."""
        headers = cast("Headers", scope.headers)  # granian's stub lacks get_all, which it has
        if endpoint != "validate":
            return scope.method, headers.get("host") or "", scope.path
        original = original_request(
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
