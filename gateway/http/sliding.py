"""Where the HTTP adapter meets the sliding refresh (``gateway.lookup.refresh``): when, and what is answered.

Better Auth's get-session (``api/routes/session.ts``), for a valid session read from its store:

1. a valid ``dont_remember`` cookie, or a non-empty ``disableRefresh`` query parameter: the
   session as read, nothing more (not even ``needsRefresh``);
2. ``needsRefresh`` = due (``Rule.due``) and not ``disableSessionRefresh``;
3. ``deferSessionRefresh`` and a GET: the session as read, with ``"needsRefresh"``; a POST goes on;
4. ``needsRefresh``: the row slid, ``Set-Cookie`` ``session_token`` (and ``session_data``), the
   bearer plugin's ``set-auth-token``, and the slid session answered.

A session Better Auth's cookie cache vouched for is answered without a slide, as Better Auth
does. With ``GATEWAY_SESSION_REFRESH=off`` (read-only) step 4 answers the session as read: the
gateway never writes. With ``all``, ``/validate`` and ``/v1/validate`` slide a due session too
(the row only: forward auth cannot set a client's cookies; ``set-auth-token`` is answered to a
bearer or ``X-Session-Token`` credential, unless credentials are stripped).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl

from gateway.config.refresh import refresh_mode
from gateway.core.sessions import Reason, Verdict
from gateway.credentials.tokens import Kind, cookie_header, token_hash
from gateway.http import responses
from gateway.http.cookies import Cookies
from gateway.http.pipeline import Answer
from gateway.lookup.refresh import Outcome, Refresher, Rule

if TYPE_CHECKING:
    from collections.abc import Callable

    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.core.sessions import Session
    from gateway.credentials.tokens import Credential, Headers, Proof
    from gateway.http.pipeline import Pipeline

_SESSION_HEADERS = [responses.JSON_TYPE, responses.NO_STORE, ("pragma", "no-cache")]
_EXPOSE = ("access-control-expose-headers", "set-auth-token")
_NOT_DEFERRED = (
    b'{"code":"METHOD_NOT_ALLOWED_DEFER_SESSION_REQUIRED",'
    b'"message":"POST method requires deferSessionRefresh to be enabled in session config"}'
)


class Sliding:
    """The sliding refresh for the HTTP endpoints of one worker."""

    def __init__(self, settings: Settings, pipeline: Pipeline, clock: Callable[[], float] = time.time) -> None:
        mode = refresh_mode(settings)
        self.writes = mode != "off"
        self.on_validate = mode == "all"
        self.defer = settings.session_defer_refresh
        self.rule = Rule(settings.session_expires_in_s, settings.session_update_age_s)
        self.slack = self.rule.slack  # the hit paths' one compare: expiresAt <= now + slack
        self.cookies = Cookies(settings)
        self._disabled = settings.session_disable_refresh
        self._bearer = "bearer" in {p.split(":")[0].strip() for p in settings.plugins.split(",")}
        self._strip = settings.strip_credentials
        self._pipeline = pipeline
        self._clock = clock

    def not_deferred(self) -> Answer:
        """Better Auth's answer to a POST without ``deferSessionRefresh``: 405."""
        return Answer(405, [responses.JSON_TYPE], "method_not_allowed", _NOT_DEFERRED)

    def _refresher(self) -> Refresher | None:
        found = getattr(self._pipeline.parts, "refresher", None)  # none: a read-only store (secondary storage)
        return cast("Refresher | None", found) if self.writes else None

    async def session_answer(self, scope: Scope, credential: Credential | None, verdict: Verdict) -> Answer:  # noqa: PLR0911  (one return per step of Better Auth's)
        """Better Auth's get-session answer for a valid ``verdict`` (with its token), slid when due."""
        session, token = cast("Session", verdict.session), cast("str", verdict.token)
        label = verdict.reason
        now = self._clock()
        due = self.rule.due(session, now)  # first: a session not due (nearly every hit) costs this compare alone
        if (not due and not self.defer) or self._skipped(scope, credential, token):
            return Answer(200, _SESSION_HEADERS, label, responses.better_auth_session(session, token))
        needs = due and not self._disabled
        if self.defer and scope.method != "POST":
            return Answer(200, _SESSION_HEADERS, label, _with_needs_refresh(session, token, needs=needs))
        refresher = self._refresher()
        if not needs or refresher is None or credential is None:
            return Answer(200, _SESSION_HEADERS, label, responses.better_auth_session(session, token))
        proof = self._proof(credential, token)
        if proof is None:
            return Answer(200, _SESSION_HEADERS, label, responses.better_auth_session(session, token))
        refreshed = await refresher.refresh(proof.key, token, _digest(verdict, token), session)
        if refreshed.session is None:
            return Answer(200, _SESSION_HEADERS, label, b"null")
        if refreshed.outcome is Outcome.unavailable:
            return Answer(200, _SESSION_HEADERS, label, responses.better_auth_session(session, token))
        slid = refreshed.session
        cookies = [("set-cookie", self.cookies.session_token(token))]
        data = self.cookies.session_data(slid, token, now)
        if data is not None:
            cookies.append(("set-cookie", data))
        if self._bearer:
            cookies += [("set-auth-token", self.cookies.signed(token)), _EXPOSE]
        return Answer(200, [*_SESSION_HEADERS, *cookies], label, responses.better_auth_session(slid, token))

    async def identity(
        self, scope: Scope, credential: Credential | None, verdict: Verdict
    ) -> tuple[Verdict, list[tuple[str, str]]]:
        """``/validate`` and ``/v1/validate`` with ``GATEWAY_SESSION_REFRESH=all``: slide a due session.

        Returns the verdict to answer with (the slid session's; ``unknown_session`` if the row is
        gone) and the headers to add to a 200.
        """
        session = verdict.session
        # An API key's mock session is no row to slide (red team: its proof raised, a 500).
        keyed = credential is None or credential.kind is Kind.api_key
        if not self.on_validate or session is None or credential is None or keyed or self._disabled:
            return verdict, []
        refresher = self._refresher()
        if refresher is None or not self.rule.due(session, self._clock()):
            return verdict, []
        proof = self._proof(credential, verdict.token)
        if proof is None or self.cookies.dont_remember(cookie_header(cast("Headers", scope.headers))):
            return verdict, []
        digest = _digest(verdict, proof.token)
        refreshed = await refresher.refresh(proof.key, proof.token, digest, session)
        if refreshed.session is None:
            return Verdict(Reason.unknown_session, None, proof.token, digest), []
        answer = verdict._replace(session=refreshed.session)
        slid = refreshed.outcome in (Outcome.written, Outcome.joined)
        if slid and credential.kind is not Kind.cookie and not self._strip:
            return answer, [("set-auth-token", self.cookies.signed(proof.token))]
        return answer, []

    def _skipped(self, scope: Scope, credential: Credential | None, token: str) -> bool:
        """Step 1 (``dont_remember``, ``disableRefresh``), and a session the cookie cache vouched for."""
        query = scope.query_string
        if query and any(k == "disableRefresh" and v for k, v in parse_qsl(query, keep_blank_values=True)):
            return True
        if self.cookies.dont_remember(cookie_header(cast("Headers", scope.headers))):
            return True
        cache = self._pipeline.parts.decider.cookie_cache
        cached = credential.cached if credential is not None else None
        return cached is not None and cache is not None and cache.open(cached, token) is not None

    def _proof(self, credential: Credential, token: str | None) -> Proof | None:
        """The credential checked again (an HMAC, only for a due session): its token and home key (``tokens.Proof``)."""
        proof = self._pipeline.parts.decider.verifier.prove(credential)
        if isinstance(proof, Reason) or (token is not None and proof.token != token):
            return None
        return proof


def _digest(verdict: Verdict, token: str) -> str:
    return verdict.digest or token_hash(token)


def _with_needs_refresh(session: Session, token: str, *, needs: bool) -> bytes:
    body = responses.better_auth_session(session, token)
    return body[:-1] + (b',"needsRefresh":true}' if needs else b',"needsRefresh":false}')
