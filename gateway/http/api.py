"""The JSON decision endpoints: ``/v1/validate`` (internal callers) and Better Auth's get-session.

Both go down the request pipeline (``pipeline``) as ``/validate`` does; they differ only in how a
verdict is written: JSON, and for get-session Better Auth's own shape (``null`` with a 200 when
there is no session), with the token the decision proved.

A cached credential skips the pipeline, as on ``/validate``: the body a hit sends is rendered by
the first hit and kept on the cache entry (``Entry.identity``, ``Entry.answer``), and get-session
reads its token off the cached key (``home_token``), so a hit costs no HMAC and no encoding.
"""

from __future__ import annotations

import asyncio
import time
from time import perf_counter
from typing import TYPE_CHECKING, cast

import msgspec

from gateway.core.sessions import Reason
from gateway.credentials.tokens import Kind, header_credential, home_token
from gateway.http import api_keys, responses
from gateway.http.pipeline import Answer
from gateway.http.sliding import Sliding

if TYPE_CHECKING:
    from collections.abc import Callable

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.credentials.tokens import Credential, Headers
    from gateway.http.pipeline import Pipeline
    from gateway.lookup.tiers import Entry

JSON = [responses.JSON_TYPE]
_BODY_TIMEOUT = [responses.JSON_TYPE, ("connection", "close")]
_NULL_SESSION = [responses.JSON_TYPE, responses.NO_STORE, ("pragma", "no-cache")]
SESSION = _NULL_SESSION  # get-session's headers, with or without a session


class _Body(msgspec.Struct):
    token: str | None = None


_BODY = msgspec.json.Decoder(_Body)


class Api:
    """``/v1/validate`` and ``/api/auth/get-session``."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._max_body_bytes = settings.max_body_bytes
        self._body_read_timeout_s = settings.body_read_timeout_s
        self._api_key_min_length = settings.api_key_min_length
        self._deny = responses.Denials(settings.retry_after_s)
        self._organizations = settings.organizations == "on"  # the identity's "organization" (issue 19)
        retry_after = ("retry-after", str(pipeline.budget.retry_after_s))
        body = responses.error("rate_limited", "too many failed lookups from this address: try again")
        self._rate_limited = Answer(429, [*JSON, responses.NO_STORE, retry_after], Reason.rate_limited, body)
        self.sliding = Sliding(settings, pipeline)  # Better Auth's sliding refresh (gateway.http.sliding)
        # Decision logging times and fingerprints every answer: then no hit skips the pipeline. The
        # access log does not (``observing``: a hit writes its line).
        self._fast = not pipeline.log.enabled
        self._observer = pipeline.observer
        # The latency histogram's v1_validate/l1 child, bound once the parts are open (``App.open``).
        self.identity_hit_seconds: Callable[[float], None] = _unbound

    async def validate(self, scope: Scope, proto: HTTPProtocol) -> None:
        """``POST /v1/validate``: the identity as JSON, for the body's ``token`` or the request's credential."""
        started = perf_counter()
        body = await self._read_body(scope, proto)
        if body is None:
            return None
        try:
            token = _BODY.decode(body).token if body.strip() else None
        except msgspec.DecodeError as exc:
            return proto.response_bytes(400, JSON, responses.error("bad_request", str(exc)))
        except RecursionError:  # msgspec's depth limit is the stack's: an ignored field nested past it
            return proto.response_bytes(400, JSON, responses.error("bad_request", "JSON nested too deeply"))
        credential = header_credential(token) if token else self._pipeline.credential(_headers(scope))
        entry = self._cached(credential, slides=self.sliding.on_validate)
        if entry is not None:  # a cached session: its body, rendered by the first hit that sent it
            identity = entry.identity
            if identity is None:
                identity = entry.identity = responses.identity(entry.session, organizations=self._organizations)
            proto.response_bytes(200, JSON, identity)
            seconds = perf_counter() - started
            self.identity_hit_seconds(seconds)
            observer = self._observer
            if observer.observed:
                observer.hit(scope, observer.hit_request(scope), "v1_validate", entry.session.user_id, seconds)
            return None
        return await self._pipeline.answer(scope, proto, credential, self._identity)

    async def _identity(self, scope: Scope, credential: Credential | None) -> Answer:
        verdict = await self._pipeline.decide(scope, credential, allow_jwt=True)
        reason = verdict.reason
        if reason is Reason.rate_limited:
            return self._rate_limited
        verdict, slid = await self.sliding.identity(scope, credential, verdict)
        reason = verdict.reason
        if verdict.session is not None:
            body = responses.identity(verdict.session, organizations=self._organizations)
            return Answer(200, [*JSON, *slid], reason, body)
        if reason is Reason.backend_unavailable:
            return Answer(503, self._deny.json_unavailable, reason, responses.error("unavailable", reason))
        return Answer(401, self._deny.json_unauthenticated[reason], reason, responses.error("unauthorized", reason))

    def _cached(self, credential: Credential | None, *, slides: bool) -> Entry | None:
        """The cached entry a hit path may answer from, else ``None`` (the pipeline answers).

        Not with decision logging on, not for an API key (the plugin's own answers), and not for a
        session due a slide when the endpoint slides (``sliding``: the one compare of its hit paths).
        """
        if not self._fast or credential is None or credential.kind is Kind.api_key:
            return None
        entry = self._pipeline.cached(credential.key)
        if entry is not None and slides and entry.session.expires_at <= time.time() + self.sliding.slack:
            return None
        return entry

    def session_hit(self, scope: Scope) -> Entry | Credential | None:
        """get-session's hit path: a cached session's entry, its body rendered: no HMAC, no encoding, no coroutine.

        The body holds the token its key proves (``home_token``), rendered by the first hit and
        reused. A session due a refresh (answered slid, or with ``needsRefresh``) takes the
        pipeline. Otherwise the request's credential (``None``: it carries none), for ``get_session``.
        """
        h = _headers(scope)
        credential = self._pipeline.find(h, h.get("authorization"))
        entry = self._cached(credential, slides=True) if not scope.query_string else None
        if entry is None or credential is None:
            return self._pipeline.with_cookie_cache(credential, h)
        if entry.answer is None:
            entry.answer = responses.better_auth_session(entry.session, home_token(credential.key))
        return entry

    async def get_session(self, scope: Scope, proto: HTTPProtocol, credential: Credential | None = None) -> None:
        """Better Auth's get-session: the same JSON (slid when due: ``sliding``), or ``null`` with status 200.

        ``credential``: the one ``session_hit`` found, if it ran (else it is found here).
        """
        if scope.method == "POST" and not self.sliding.defer:
            status, headers, _, body = self.sliding.not_deferred()
            return proto.response_bytes(status, headers, body or b"")
        if credential is None:
            credential = self._pipeline.credential(_headers(scope))
        return await self._pipeline.answer(scope, proto, credential, self._session)

    async def _session(self, scope: Scope, credential: Credential | None) -> Answer:
        # The answer holds the token: the decision proves it (once), or reads it off a cached key.
        verdict = await self._pipeline.decide(scope, credential, need_token=True)
        reason = verdict.reason
        if reason is Reason.rate_limited:
            return self._rate_limited
        if reason is Reason.backend_unavailable:
            return Answer(503, self._deny.json_unavailable, reason, responses.error("unavailable", reason))
        if credential is not None and credential.kind is Kind.api_key:  # the API key plugin's own answers
            return api_keys.session_answer(verdict, credential, _headers(scope), self._api_key_min_length)
        if verdict.session is None or verdict.token is None:
            return Answer(200, _NULL_SESSION, reason, b"null")
        return await self.sliding.session_answer(scope, credential, verdict)

    async def _read_body(self, scope: Scope, proto: HTTPProtocol) -> bytes | None:
        """Read at most ``max_body_bytes``; answer 413 and return ``None`` beyond that."""
        limit = self._max_body_bytes
        declared = scope.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            proto.response_bytes(status, JSON, responses.error("bad_request", f"body limit is {limit} bytes"))
            return None
        if declared == "0" and scope.headers.get("transfer-encoding") is None:
            return b""  # declared empty (a credential in the headers): no read to time, no timer to arm
        chunks, size = [], 0
        try:
            # The header timeout ends once the head is read: without this a client trickling its
            # body a byte at a time would hold the connection (and a worker's slot) forever.
            async with asyncio.timeout(self._body_read_timeout_s):
                async for chunk in proto:
                    size += len(chunk)
                    if size > limit:
                        body = responses.error("bad_request", f"body limit is {limit} bytes")
                        proto.response_bytes(413, JSON, body)
                        return None
                    chunks.append(chunk)
        except TimeoutError:
            body = responses.error("request_timeout", "the body did not arrive in time")
            proto.response_bytes(408, _BODY_TIMEOUT, body)
            return None
        return b"".join(chunks)


def _headers(scope: Scope) -> Headers:
    return cast("Headers", scope.headers)  # granian's stub lacks get_all, which it has


def _unbound(_: float) -> None:
    """Nothing to observe into before the parts are open (``App.open`` binds the histogram)."""
