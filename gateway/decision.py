"""The decision: is this credential a valid Better Auth session? Knows nothing of HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import BackendUnavailable
from gateway.redis_tier import token_hash
from gateway.sessions import Reason, Session, Verdict

if TYPE_CHECKING:
    from gateway.cookie_cache import CookieCache
    from gateway.tiers import Tiers
    from gateway.tokens import Credential, Verifier


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


class Decider:
    """Checks a credential locally, then looks its session up through the tiers."""

    def __init__(self, verifier: Verifier, tiers: Tiers, cookie_cache: CookieCache | None = None) -> None:
        self.verifier = verifier
        self.tiers = tiers
        self.cookie_cache = cookie_cache

    async def decide(self, credential: Credential | None) -> Verdict:
        """Return the verdict for ``credential`` (``None``: the request carried none)."""
        if credential is None:
            return Verdict(Reason.no_credentials)
        entry = self.tiers.cached(credential.key)
        if entry is not None:
            return Verdict(Reason.ok, entry.session)
        if self.tiers.known_absent(credential.key):
            return Verdict(Reason.unknown_session)
        token = self.verifier.token(credential)
        if isinstance(token, Reason):
            return Verdict(token)
        if credential.cached is not None and self.cookie_cache is not None:
            verdict = self._from_cookie_cache(credential.cached, token)
            if verdict is not None:
                return verdict
        return await self._look_up(credential.key, token)

    def _from_cookie_cache(self, cached: str, token: str) -> Verdict | None:
        """Better Auth's cookie cache, trusted as Better Auth trusts it, unless heard revoked since."""
        assert self.cookie_cache is not None  # noqa: S101  (checked by the caller)
        session = self.cookie_cache.open(cached, token)
        metrics = self.tiers.metrics
        if session is None or self.tiers.revoked_lately(token_hash(token), session.user_id):
            metrics.lookup("cookie_cache", "miss")
            return None
        metrics.lookup("cookie_cache", "hit")
        reason = judge(session, self.tiers.l1.clock())
        return Verdict(reason, session if reason is Reason.ok else None)

    async def _look_up(self, key: str, token: str) -> Verdict:
        try:
            loaded = await self.tiers.load(token)
        except BackendUnavailable:
            return Verdict(Reason.backend_unavailable)
        session = loaded.session
        reason = judge(session, self.tiers.l1.clock())
        if session is not None and reason is Reason.ok:
            self.tiers.remember(key, loaded)
            return Verdict(Reason.ok, session)
        if reason is Reason.unknown_session:
            self.tiers.remember_absent(key)
        return Verdict(reason)
