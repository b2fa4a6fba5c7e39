"""The decision: is this credential a valid Better Auth session? Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from gateway.core.errors import BackendUnavailable
from gateway.core.sessions import Reason, Session, Verdict
from gateway.credentials.jwts import looks_like_jwt
from gateway.credentials.tokens import Kind, home_token, token_hash

if TYPE_CHECKING:
    from gateway.credentials.cookie_cache import CookieCache
    from gateway.credentials.jwts import JwtVerifier
    from gateway.credentials.tokens import Credential, Verifier
    from gateway.lookup.api_keys import ApiKeys
    from gateway.lookup.tiers import Entry, Tiers


def judge(session: Session | None, now: float) -> Reason:
    """Better Auth's read-time rules for a looked-up session (``api/routes/session.ts``).

    Valid iff the row and its user exist and ``expiresAt`` is not in the past; the gateway also
    refuses a user the admin plugin has banned (``banned`` and ``banExpires`` unset or ahead).
    """
    if session is None:
        return Reason.unknown_session
    if session.expires_at < now:
        return Reason.expired
    if session.banned_until > now:
        return Reason.banned
    return Reason.ok


class Turn(Protocol):
    """A request's turn at a lookup, from its address's failure budget (``budget.Turn``)."""

    async def take(self, *, signed: str | None) -> bool:
        """Wait for the address's turn; ``False``: none came in time (refused, not judged).

        ``signed``: the hash of the token a signature proved (``None``: a raw bearer token).
        """
        ...

    def settle(self, *, spent: bool) -> None:
        """End the lookup; ``spent`` if it found no valid session."""
        ...


# Remembered as absent for the negative TTL: what a lookup found that no later lookup will change
# within it (Better Auth never makes an expired session valid again: it deletes it). A ban is not
# remembered: an unban must count at once.
_ABSENT = frozenset({Reason.unknown_session, Reason.expired})
# The most entries one revocation rechecks at once (a user's many sessions, a flood of forged
# notifications): the rest are only evicted, and looked up when next presented.
RECHECK_MAX = 16
log = logging.getLogger("gateway.lookup")


class Decider:
    """Checks a credential locally, then looks its session up through the tiers."""

    def __init__(
        self,
        verifier: Verifier,
        tiers: Tiers,
        cookie_cache: CookieCache | None = None,
        jwts: JwtVerifier | None = None,
        api_keys: ApiKeys | None = None,
    ) -> None:
        self.verifier = verifier
        self.tiers = tiers
        self.cookie_cache = cookie_cache
        self.jwts = jwts
        self.api_keys = api_keys  # GATEWAY_API_KEYS=on: the API key plugin's keys (gateway.lookup.api_keys)
        self._l1 = tiers.l1
        self._metrics = tiers.metrics
        self._rechecks: set[asyncio.Task[Verdict]] = set()  # asyncio keeps only weak references
        tiers.on_revoked = self.recheck

    def recheck(self, evicted: list[tuple[str, str]]) -> None:
        """Look the entries a revocation evicted up again now, not when next presented.

        Their next request then finds the answer cached (absent: refused at once) or joins the
        lookup in flight, instead of starting it: a revoked session is refused sooner on every
        worker. The lookup is the one a request would make, begun after the eviction (so it
        reads the revoking commit) and subject to the same staleness checks; a forged or
        harmless notification (an ``UPDATE``) costs that query and caches the session again.
        """
        for key, digest in evicted[:RECHECK_MAX]:
            self._metrics.event("revocation_recheck")
            task = asyncio.ensure_future(self._look_up(key, home_token(key), digest))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecked)

    def _rechecked(self, task: asyncio.Task[Verdict]) -> None:
        self._rechecks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a revocation's recheck failed", exc_info=task.exception())

    async def settled(self) -> None:
        """Wait for the rechecks under way (tests; shutdown)."""
        await asyncio.gather(*self._rechecks, return_exceptions=True)

    def cached(self, key: str) -> Entry | None:
        """The fast path: the live cached entry for a credential key, or ``None``.

        No HMAC, no I/O and no coroutine: only keys of credentials that passed the check are
        ever cached, so a hit is the verdict ``decide`` would reach (``Reason.ok``), counted as
        one. A miss counts nothing: the caller goes on to ``decide``, which counts it.
        """
        entry = self._l1.get(key)
        if entry is not None:
            self._metrics.fast_hits += 1
        return entry

    async def decide(  # noqa: PLR0911  (one return per kind of credential)
        self,
        credential: Credential | None,
        *,
        allow_jwt: bool = False,
        turn: Turn | None = None,
        need_token: bool = False,
    ) -> Verdict:
        """Return the verdict for ``credential`` (``None``: the request carried none).

        The credential is checked (its HMAC computed) at most once, and only if no cache answers
        for it; the token it proves, and that token's hash, travel in the verdict.

        ``allow_jwt``: a bearer JWT of the JWT plugin counts too (not on Better Auth's own
        get-session, which knows no such credential). ``turn``: the failure budget of the
        request's address, consulted only when a lookup is needed (``Reason.rate_limited`` if
        no turn came); everything answered without one never waits. ``need_token``: the caller
        answers with the token (Better Auth's get-session): a cached credential's token is read
        off its key (``home_token``: only checked keys are cached), with no HMAC.
        """
        if credential is None:
            return Verdict(Reason.no_credentials)
        if credential.kind is Kind.api_key:  # found only with GATEWAY_API_KEYS=on
            return await self.api_keys.decide(credential, turn) if self.api_keys else Verdict(Reason.malformed)
        if allow_jwt and self._jwt(credential):
            return await self._from_jwt(credential.value)
        entry = self.tiers.cached(credential.key)
        if entry is not None:
            token = home_token(credential.key) if need_token else None
            return Verdict(Reason.ok, entry.session, token, entry.digest if need_token else None)
        # Better Auth reads its cookie cache before its store: a session it vouches for counts
        # even when a lookup found none a moment ago.
        cached = credential.cached if self.cookie_cache is not None else None
        absent = self.tiers.known_absent(credential.key) if cached is None else None
        if absent is not None:
            return Verdict(absent)
        proof = self.verifier.prove(credential)
        if isinstance(proof, Reason):
            return Verdict(proof)
        return await self._proved(credential, proof.key, proof.token, cached, turn)

    async def _proved(
        self, credential: Credential, key: str, token: str, cached: str | None, turn: Turn | None
    ) -> Verdict:
        """The verdict for a credential that proved ``token`` (its home ``key``) and no cache had."""
        digest = token_hash(token)  # once: the caches, the failure budget and the verdict share it
        known = self._respelled(key, cached, token, digest) if key != credential.key else None
        if known is not None:
            return known
        if cached is not None:
            verdict = self._from_cookie_cache(cached, token, digest)
            if verdict is not None:
                return verdict
        if turn is None or self.tiers.joinable(token):  # joining a lookup in flight costs nothing more
            return await self._look_up(key, token, digest)
        return await self._look_up_in_turn(credential, key, token, digest, turn)

    def _respelled(self, key: str, cached: str | None, token: str, digest: str) -> Verdict | None:
        """A respelling (``tokens.Proof``): what is known of its home spelling counts for it.

        Only the home spelling is ever cached, so respellings can't grow or churn the caches.
        """
        entry = self.tiers.respelled(key)
        if entry is not None:
            return Verdict(Reason.ok, entry.session, token, digest)
        absent = self.tiers.known_absent(key) if cached is None else None
        return None if absent is None else Verdict(absent, None, token, digest)

    def _jwt(self, credential: Credential) -> bool:
        return self.jwts is not None and credential.kind is not Kind.cookie and looks_like_jwt(credential.value)

    async def _from_jwt(self, token: str) -> Verdict:
        assert self.jwts is not None  # noqa: S101  (checked by the caller)
        result = await self.jwts.verify(token)
        if result is Reason.backend_unavailable:  # the key source is down: 503, never 401
            self.tiers.metrics.lookup("jwt", "error")
            return Verdict(result)
        self.tiers.metrics.lookup("jwt", "miss" if isinstance(result, Reason) else "hit")
        if isinstance(result, Reason):
            return Verdict(result)
        return Verdict(Reason.ok, result)

    def _from_cookie_cache(self, cached: str, token: str, digest: str) -> Verdict | None:
        """Better Auth's cookie cache, trusted as Better Auth trusts it, unless heard revoked since."""
        assert self.cookie_cache is not None  # noqa: S101  (checked by the caller)
        session = self.cookie_cache.open(cached, token)
        metrics = self.tiers.metrics
        if session is None or self.tiers.revoked_lately(digest, session.user_id):
            metrics.lookup("cookie_cache", "miss")
            return None
        metrics.lookup("cookie_cache", "hit")
        reason = judge(session, self.tiers.l1.clock())
        return Verdict(reason, session if reason is Reason.ok else None, token, digest)

    async def _look_up_in_turn(self, credential: Credential, key: str, token: str, digest: str, turn: Turn) -> Verdict:
        """A lookup in the turn the address's failure budget gives it (``gateway.http.budget``)."""
        # A value with a signature was proved by it (a raw bearer token has none): such
        # credentials can't be made up, and wait before raw ones, told apart by their token's hash.
        signed = credential.kind is Kind.cookie or "." in credential.value
        if not await turn.take(signed=digest if signed else None):
            return Verdict(Reason.rate_limited, None, token, digest)
        spent = True  # unless it is known to have found a session: a lookup left behind still runs
        try:
            verdict = await self._look_up(key, token, digest)
            # Spent on no valid session; an outage is not the address's doing.
            spent = verdict.reason not in (Reason.ok, Reason.backend_unavailable)
        finally:
            turn.settle(spent=spent)
        return verdict

    async def _look_up(self, key: str, token: str, digest: str) -> Verdict:
        try:
            loaded = await self.tiers.load(token, digest)
        except BackendUnavailable:
            return Verdict(Reason.backend_unavailable, None, token, digest)
        session = loaded.session
        reason = judge(session, self.tiers.l1.clock())
        if session is not None and reason is Reason.ok:
            self.tiers.remember(key, loaded)
            return Verdict(Reason.ok, session, token, digest)
        if reason in _ABSENT:
            self.tiers.remember_absent(key, reason)
        return Verdict(reason, None, token, digest)
