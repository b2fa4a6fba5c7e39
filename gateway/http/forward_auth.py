"""``/validate``: the decision endpoint every reverse proxy calls (``docs/forward-auth.md`` §6).

The hit path (no policy, no query, a cached session) goes through the core's fast path
(``Decider.cached``) and sends a header list that already exists: it is rendered once on the cache
entry (``Entry.headers``, the adapter's slot), so it dies with the entry. Everything else — policy,
redirect mode, credential stripping — goes down the request pipeline (``pipeline``) and works
from the original request as ``original`` reconstructs it.
"""

from __future__ import annotations

import contextlib
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, quote, urlsplit

from gateway.core.sessions import Reason
from gateway.http import policy, responses
from gateway.http.original import Original, original_request
from gateway.http.pipeline import Answer
from gateway.http.rules_file import RulesFile
from gateway.http.sliding import Sliding
from gateway.http.stripping import Stripper

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from gateway.config import Settings
    from gateway.core.sessions import Session, Verdict
    from gateway.credentials.tokens import Credential, Headers
    from gateway.http.pipeline import Pipeline
    from gateway.lookup.entries import Entry

HeaderList = list[tuple[str, str]]
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_RATE_LIMITED = [("x-auth-error-status", "429"), ("x-auth-reason", "rate_limited"), responses.NO_STORE]
_BAD_POLICY = [("x-auth-reason", "bad_policy"), responses.NO_STORE]
# 403, not 400: nginx relays only 401 and 403 from an auth endpoint (anything else becomes a 500).
_AMBIGUOUS = [("x-auth-reason", "ambiguous_request"), responses.NO_STORE]


class ForwardAuth:
    """Turns a verdict into 200, 401, 302/303, 403 or 503 for a proxy."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        # nginx relays only 401 and 403 from an auth endpoint: the 429 travels in a header.
        self._rate_limited = [*_RATE_LIMITED, ("retry-after", str(pipeline.budget.retry_after_s))]
        self._networks = settings.trusted_proxies
        self._proxy = settings.proxy
        self._identity = responses.Identity(
            settings.identity_headers,
            remote=settings.remote_headers,
            organizations=settings.organizations == "on",
            fields=settings.field_headers,
        )
        self._deny = responses.Denials(settings.retry_after_s)
        self._organizations = settings.organizations == "on"  # allowed_org_roles can be met (issue 19)
        self._rules = RulesFile(settings.rules_file, organizations=self._organizations) if settings.rules_file else None
        self._rules_reload_s = settings.rules_reload_s
        self._strip = Stripper(settings) if settings.strip_credentials else None
        self._login = settings.login_url
        self._param = settings.redirect_param
        self._redirect_hosts = settings.redirect_hosts  # lower case; by default the login URL's host
        # Decision logging needs the full path (it times and fingerprints every answer); the access
        # log and the echoed request ID do not (``observing``: the hit path writes and echoes them).
        self._simple = self._rules is None and self._strip is None and not pipeline.log.enabled
        # GATEWAY_SESSION_REFRESH=all: a due session takes the full path, which slides it (gateway.http.sliding).
        self._sliding = Sliding(settings, pipeline)
        self._slides, self._slack = self._sliding.on_validate, self._sliding.slack

    def watching_rules(self, event: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """While open, reload the rules file on SIGHUP and on a change (``rules_file``); ``event`` counts reloads."""
        if self._rules is None:
            return contextlib.nullcontext()
        return self._rules.watching(self._rules_reload_s, event)

    def hit(self, scope: Scope) -> Entry | Credential | None:
        """The hit path: a cached session's entry, its headers rendered, with no HMAC, no I/O and no coroutine.

        Otherwise the request's credential (``None``: it carries none), found once, for the full
        path (``__call__``): no cached session, or a query string, a policy or credential
        stripping to take into account.
        """
        h = cast("Headers", scope.headers)  # granian's stub lacks get_all, which it has
        pipeline = self._pipeline
        authorization = h.get("authorization")
        if not self._simple or scope.query_string:
            return pipeline.with_cookie_cache(pipeline.find(h, authorization), h)
        credential = None
        if authorization is not None and authorization[:7].lower() == "bearer " and not pipeline.api_key_names:
            # A bearer credential's key is the header itself, and only keys of checked
            # credentials are ever cached: a hit is the answer find_credential would lead to
            # (not with API keys on: a key's header goes first, and find reads it).
            key = authorization
        else:
            credential = pipeline.find(h, authorization)
            if credential is None:
                return None
            key = credential.key
        entry = pipeline.cached(key)
        if entry is None or (self._slides and entry.session.expires_at <= time.time() + self._slack):
            return pipeline.with_cookie_cache(credential or pipeline.find(h, authorization), h)
        if entry.headers is None:  # the first hit renders them; every later one sends the same list
            entry.headers = self._identity.headers(entry.session)
        return entry

    def __call__(self, scope: Scope, proto: HTTPProtocol, credential: Credential | None) -> Awaitable[None]:
        """Answer one forward-auth request that ``hit`` did not, down the request pipeline."""
        return self._pipeline.answer(scope, proto, credential, self._answer)

    async def _answer(self, scope: Scope, credential: Credential | None) -> Answer:  # noqa: PLR0911  (one return per outcome)
        envoy = scope.path.startswith("/validate/")  # its query belongs to the original request
        query = "" if envoy else scope.query_string
        if query or self._rules is not None:
            try:
                asked = policy.from_query(query, organizations=self._organizations)
            except ValueError:
                return Answer(400, _BAD_POLICY, "bad_policy")
            # The auth URL's policy adds to the rules file's, never replaces it: an admins-only route
            # still obeys its host's rule (red team of issue 14, N).
            matched = self._rule(scope)
            if matched is None:  # checked before any lookup: an unjudgeable request costs no I/O
                return Answer(403, _AMBIGUOUS, "ambiguous_request")
            rule = policy.both(asked, matched)
        else:  # no query, no rules file: what from_query, _rule and both would come to
            rule = policy.DEFAULT
        verdict = await self._pipeline.decide(scope, credential, allow_jwt=True)
        if verdict.reason is Reason.rate_limited:
            return Answer(403, self._rate_limited, verdict.reason)
        if verdict.reason is Reason.backend_unavailable:
            return Answer(503, self._deny.unavailable, verdict.reason)
        slid: list[tuple[str, str]] = []
        if self._slides:  # else no coroutine to await: sliding is off on this endpoint
            verdict, slid = await self._sliding.identity(scope, credential, verdict)
        if verdict.session is not None:
            allowed = self._allow(scope, verdict.session, rule)
            if slid and allowed.status == HTTPStatus.OK:
                allowed.headers.extend(slid)  # a list of its own (Identity.headers)
            return allowed
        if rule.allow_anonymous:
            # A credential that proved nothing is still one: stripped too. no-store: this pass
            # depended on the request, not on the credential a proxy's auth cache keys it by.
            strip = self._strip.headers(cast("Headers", scope.headers)) if self._strip is not None else []
            return Answer(200, [*self._identity.anonymous, responses.NO_STORE, *strip], "anonymous")
        return self._refuse(scope, verdict, redirect=_wants_redirect(scope, query))

    def _rule(self, scope: Scope) -> policy.Policy | None:
        """The rules file's policy for the original request; ``None``: it cannot be judged."""
        if self._rules is None:
            return policy.DEFAULT
        rules = self._rules.current  # read once: the whole set in force, even if a reload comes next
        original = self._original(scope)
        return None if original is None else rules.for_request(original)

    def _original(self, scope: Scope) -> Original | None:
        return original_request(
            proxy=self._proxy,
            method=scope.method,
            scheme=scope.scheme,
            path=scope.path,
            query=scope.query_string,
            peer=scope.client,
            headers=cast("Headers", scope.headers),  # granian's stub lacks get_all, which it has
            networks=self._networks,
        )

    def _allow(self, scope: Scope, session: Session, rule: policy.Policy | policy.Both) -> Answer:
        if rule is not policy.DEFAULT and not rule.allows(session):  # the default constrains nothing
            return Answer(403, self._deny.forbidden, "forbidden")
        headers = self._identity.headers(session)
        if self._rules is not None:
            # A rules-file 200 depends on the original host, path and method, which an auth cache
            # keyed by credential (ingress-nginx's auth-cache-key) would not see: it would replay
            # this answer for another path or a DELETE. nginx's proxy_cache stores no no-store answer.
            headers.append(responses.NO_STORE)
        if self._strip is not None:
            headers += self._strip.headers(cast("Headers", scope.headers))
        return Answer(200, headers, Reason.ok)

    def _refuse(self, scope: Scope, verdict: Verdict, *, redirect: bool) -> Answer:
        headers = self._deny.unauthenticated[verdict.reason]
        if not self._login:
            return Answer(401, headers, verdict.reason)
        original = self._original(scope)
        location = self._login_location(original) if original else self._login
        browser = _browser_navigation(scope)
        if redirect and browser:
            status = 303 if original and original.method not in ("GET", "HEAD") else 302
            return Answer(status, [("location", location), responses.NO_STORE], verdict.reason)
        # nginx turns any 3xx from an auth endpoint into a 500: by default a 401 says where to go,
        # and X-Auth-Browser-Redirect says it only for page loads, for nginx's error_page to act on.
        extra = [("location", location), ("x-auth-browser-redirect", location)] if browser else [("location", location)]
        return Answer(401, [*headers, *extra], verdict.reason)

    def _login_location(self, original: Original) -> str:
        """The login URL, with the original URL to return to when its host is allowed (no open redirect)."""
        url = original.url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        # Browsers read "\\" as "/" and honour userinfo differently from Python: refuse anything
        # whose host two parsers could disagree on.
        ambiguous = "\\" in url or "@" in parts.netloc or _CONTROL.search(url) or parts.scheme not in ("http", "https")
        if ambiguous or not any(host == h or (h.startswith(".") and host.endswith(h)) for h in self._redirect_hosts):
            return self._login
        separator = "&" if "?" in self._login else "?"
        return f"{self._login}{separator}{self._param}={quote(original.url, safe='')}"


def _wants_redirect(scope: Scope, query: str) -> bool:
    if (scope.headers.get("x-auth-redirect") or "").strip() in ("1", "true"):
        return True
    return bool(query) and parse_qs(query).get("redirect", ["0"])[-1] in ("1", "true")


def _browser_navigation(scope: Scope) -> bool:
    """A page load (not an XHR or a fetch), which a redirect to the login page helps."""
    h = scope.headers
    return (
        "text/html" in (h.get("accept") or "")
        and (h.get("x-requested-with") or "").lower() != "xmlhttprequest"
        and (h.get("sec-fetch-mode") or "navigate") == "navigate"
    )
