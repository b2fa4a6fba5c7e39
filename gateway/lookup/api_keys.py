"""API keys judged through an in-process cache: one lookup per key, evicted by the triggers' ``k:`` notifications.

A key's row is cached (not its verdict): the plugin's rules depend on the time (``expiresAt``,
a refill coming due, a rate-limit window closing), so each request judges the cached row at its
own moment (``credentials.api_keys.judge_key``). Entries are keyed by ``key_digest`` (SHA-256 of
the ``key`` column), never by the key.

Revocation: the triggers notify ``k:<digest>`` when a key is deleted, or updated in a way that
changes a verdict (``postgres.triggers``), and ``u:<user id>`` when its user changes; each
evicts at once (a user's change forgets every key: keys are few, users' changes rare). A lookup
that began before an eviction does not cache what it read (an epoch, as ``lookup.revocations``
does for sessions). Without the triggers the cache's TTL is capped as the session LRU's is.
Redis is not used for keys: each worker asks Postgres once per key per TTL.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.core.errors import BackendUnavailable
from gateway.core.lru import LRU
from gateway.core.sessions import Reason, Verdict
from gateway.credentials.api_keys import (
    check_key,
    judge_key,
    key_digest,
    mock_session,
    stored_key,
    try_again_in_ms,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.credentials.api_keys import ApiKeyRecord
    from gateway.credentials.tokens import Credential
    from gateway.lookup.decision import Turn
    from gateway.lookup.protocols import Invalidator
    from gateway.telemetry.metrics import Metrics


class _Absent:
    """A cached "no such key" (for the negative TTL)."""


_ABSENT = _Absent()


class ApiKeySource(Protocol):
    """Where keys are read (``postgres.api_keys.ApiKeyStore``)."""

    def fetch(self, stored: str) -> Awaitable[ApiKeyRecord | None]:
        """The key whose ``key`` column is ``stored``; raise ``StoreUnavailable`` when the source can't answer."""
        ...


class ApiKeyRules(Protocol):
    """The plugin's options the gateway must be told (``Settings``' ``api_key_*``)."""

    @property
    def api_key_disable_hashing(self) -> bool: ...  # noqa: D102
    @property
    def api_key_min_length(self) -> int: ...  # noqa: D102
    @property
    def api_key_max_length(self) -> int: ...  # noqa: D102
    @property
    def api_key_config_id(self) -> str: ...  # noqa: D102
    @property
    def api_key_rate_limit(self) -> bool: ...  # noqa: D102
    @property
    def api_key_session_expires_in(self) -> int: ...  # noqa: D102


class ApiKeys:
    """Judges API key credentials: checked unread, looked up once per TTL, judged per request."""

    def __init__(  # noqa: PLR0913  (the cache's knobs, keyword-only)
        self,
        source: ApiKeySource,
        rules: ApiKeyRules,
        *,
        max_entries: int,
        ttl_s: float,
        negative_ttl_s: float,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._rules = rules
        self._cache: LRU[ApiKeyRecord | _Absent] = LRU(max_entries, clock)
        self._ttl_s = self._configured_ttl_s = ttl_s
        self._negative_ttl_s = min(negative_ttl_s, ttl_s)
        self._flights: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        self._epoch = 0  # evictions heard: a lookup begun before one caches nothing
        self._metrics = metrics
        self.clock = clock

    def bound_staleness(self, bound_s: float | None) -> None:
        """Cap the TTL at ``bound_s`` while no trigger tells of revocations (``None``: lift the cap, flushing)."""
        self._ttl_s = self._configured_ttl_s if bound_s is None else min(self._configured_ttl_s, bound_s)
        self.flush_keys()

    async def decide(self, credential: Credential, turn: Turn | None = None) -> Verdict:
        """The verdict on an API key credential; the mock session when valid (user agent and IP left for the caller).

        The verdict carries the key as its token (Better Auth's get-session answers it to its
        holder) and the key's digest.
        """
        value, rules = credential.value, self._rules
        malformed = check_key(value, rules.api_key_min_length, rules.api_key_max_length)
        if malformed is not None:
            return Verdict(malformed)
        stored = stored_key(value, hashing=not rules.api_key_disable_hashing)
        digest = key_digest(stored)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None:
            found = None if isinstance(cached, _Absent) else cached
            self._metrics.lookup("api_key_l1", "hit")
        else:
            turn = turn if digest not in self._flights else None  # joining a lookup in flight costs nothing more
            if turn is not None and not await turn.take(signed=None):
                return Verdict(Reason.rate_limited, None, value, digest)
            spent = False  # an outage is not the address's doing
            try:
                verdict = self._judged(await self._load(stored, digest), value, digest, now)
                spent = verdict.reason is not Reason.ok
            except BackendUnavailable:
                return Verdict(Reason.backend_unavailable, None, value, digest)
            finally:
                if turn is not None:
                    turn.settle(spent=spent)
            return verdict
        return self._judged(found, value, digest, now)

    def _judged(self, found: ApiKeyRecord | None, value: str, digest: str, now: float) -> Verdict:
        if found is None:
            return Verdict(Reason.unknown_session, None, value, digest)
        rules = self._rules
        reason = judge_key(found, now, config_id=rules.api_key_config_id, rate_limit=rules.api_key_rate_limit)
        if reason is Reason.key_rate_limited:
            return Verdict(reason, None, value, digest, try_again_in_ms(found, now))
        if reason is not Reason.ok:
            return Verdict(reason, None, value, digest)
        expires_in = rules.api_key_session_expires_in
        session = mock_session(found, now, expires_in=expires_in, user_agent=None, ip_address=None)
        return Verdict(Reason.ok, session, value, digest)

    async def _load(self, stored: str, digest: str) -> ApiKeyRecord | None:
        """One lookup per key at a time (single-flight, shielded from a client leaving); cached unless evicted since."""
        flight = self._flights.get(digest)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(stored, digest))
            self._flights[digest] = flight
            flight.add_done_callback(lambda _: self._flights.pop(digest, None))
        return await asyncio.shield(flight)

    async def _fetch(self, stored: str, digest: str) -> ApiKeyRecord | None:
        epoch = self._epoch
        try:
            found = await self._source.fetch(stored)
        except BackendUnavailable:
            self._metrics.lookup("api_key", "error")
            raise
        self._metrics.lookup("api_key", "miss" if found is None else "hit")
        if epoch == self._epoch:  # else an eviction came while it read: what it read may be what was revoked
            now = self.clock()
            if found is None:
                self._cache.put(digest, _ABSENT, now + self._negative_ttl_s)
            else:  # past its expiresAt too: each request judges it (refused), none looks it up again
                self._cache.put(digest, found, now + self._ttl_s)
        return found

    def invalidate_key(self, digest: str) -> None:
        """A key was deleted or changed (``k:<digest>``), or ``*``: the table was truncated."""
        self._epoch += 1
        if digest == "*":
            self._cache.clear()
        else:
            self._cache.pop(digest)
        self._flights.pop(digest, None)  # a lookup in flight is not joined by later requests

    def flush_keys(self) -> None:
        """Forget every key (a user changed, notifications may have been missed, the TTL changed)."""
        self._epoch += 1
        self._cache.clear()
        self._flights.clear()


class WithApiKeys:
    """An ``Invalidator`` that tells the API keys too: a user's change or a flush forgets every key."""

    def __init__(self, inner: Invalidator, api_keys: ApiKeys) -> None:
        self._inner = inner
        self._api_keys = api_keys

    def invalidate_token(self, digest: str) -> Awaitable[object] | None:
        """A session ended: only the sessions' caches care."""
        return self._inner.invalidate_token(digest)

    def invalidate_user(self, user_id: str) -> Awaitable[object] | None:
        """A user changed: every key may be theirs."""
        self._api_keys.flush_keys()
        return self._inner.invalidate_user(user_id)

    def flush(self) -> Awaitable[None]:
        """Everything goes."""
        self._api_keys.flush_keys()
        return self._inner.flush()


class Listening(NamedTuple):
    """What the Postgres listener is given, with API keys or without."""

    invalidator: Invalidator
    on_triggers: Callable[[bool], None]
    on_api_key: Callable[[str], None] | None


def listening(
    invalidator: Invalidator, api_keys: ApiKeys | None, on_triggers: Callable[[bool], None], bound_s: float
) -> Listening:
    """The listener's invalidator and callbacks, telling the API keys too when there are any.

    ``on_triggers``: the sessions' caches' own (whether the triggers are in place); ``bound_s``:
    the staleness bound while they are not.
    """
    if api_keys is None:
        return Listening(invalidator, on_triggers, None)

    def both(installed: bool) -> None:  # noqa: FBT001  (the listener's callback)
        on_triggers(installed)
        api_keys.bound_staleness(None if installed else bound_s)

    return Listening(WithApiKeys(invalidator, api_keys), both, api_keys.invalidate_key)
