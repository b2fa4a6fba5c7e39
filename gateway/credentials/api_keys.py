"""API keys of ``@better-auth/api-key`` (1.7, ``enableSessionForAPIKeys``): found, hashed and judged. No I/O.

The plugin's rules (its ``dist/index.mjs``, 1.7.5, read with better-auth 1.7.25):

- **Found** in the configured headers (``apiKeyHeaders``, ``x-api-key`` by default), the first
  with a non-empty value; an empty one counts as absent (the request is then judged by its session
  credentials). A key shorter than ``defaultKeyLength`` (64) is refused before any lookup (403).
  The plugin's hook runs before any session is read: a key wins over a cookie or a bearer token.
- **Hashed**: the ``key`` column holds SHA-256 of the key, base64url without padding
  (``defaultKeyHasher``), or the key itself with ``disableKeyHashing``.
- **Judged** (``validateApiKey``): ``configId`` must match; ``enabled = false`` refuses;
  ``expiresAt`` past refuses; ``remaining = 0`` with no ``refillAmount`` refuses (429); then the
  plugin *claims* a use: a due refill (``refillInterval`` since ``lastRefillAt``, else
  ``createdAt``) restores ``refillAmount``, else ``remaining`` must be above 0 (429), and the rate
  limit (``requestCount`` against ``rateLimitMax`` within ``rateLimitTimeWindow`` of
  ``lastRequest``) must not be spent (429). The key's ``referenceId`` is the user.

The gateway reads and never writes: it honours every refusal that the row *as it stands* implies
(``judge_key``), but a use through the gateway decrements no ``remaining`` and counts toward no
rate-limit window. It refuses a banned user's key too (the admin plugin's ban; Better Auth 1.7.25
does not check bans on this path).

Whatever the header holds is the client's: a value that cannot be one of Better Auth's keys
(a control, a space or a non-ASCII character, a second header, over ``max_length``) is refused
before any lookup. The key itself never leaves the process: caches, logs and the triggers'
notifications only know ``key_digest`` (SHA-256 hex of the ``key`` column's value).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import re
from typing import TYPE_CHECKING

import msgspec

from gateway.core.sessions import JSONObject, Reason, Session
from gateway.credentials.tokens import Credential, Kind

if TYPE_CHECKING:
    from gateway.credentials.tokens import Headers

API_KEY_PREFIX = "k:"  # a credential key of this kind: no bearer (``bearer ``), header (``x:``) or cookie (``;``) key
_KEY_ALPHABET = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what any key generator's output is sent as
UNREADABLE_KEY = API_KEY_PREFIX + "unreadable"  # no hex digest: no other key's
_UNREADABLE = "\x00"  # the value of a key field granian could not read: never passes ``check_key``
_HTTP_WHITESPACE = " \t"  # what the Fetch Headers the plugin reads trim from a value


def api_key_credential(headers: Headers, names: tuple[str, ...]) -> Credential | None:
    """The API key a request carries in the first of ``names`` with a non-empty value, or ``None``.

    Two fields of one name are joined as the plugin's ``Headers.get`` joins them (``", "``), so
    the value then holds a space and ``check_key`` refuses it: ambiguous, never looked up.
    """
    for name in names:
        values = headers.get_all(name)
        if not values:
            # granian gives no value for a field it cannot read as visible ASCII (a non-ASCII byte),
            # yet lists its name: a key is there, unreadable. Refused (the plugin would refuse it
            # too), never passed over for the session credentials beside it.
            if name in headers.keys():  # noqa: SIM118  (RSGIHeaders has keys(), no __contains__)
                return Credential(UNREADABLE_KEY, Kind.api_key, _UNREADABLE)
            continue
        value = ", ".join(v.strip(_HTTP_WHITESPACE) for v in values) if len(values) > 1 else values[0]
        value = value.strip(_HTTP_WHITESPACE)
        if value:
            # The key (the cache key of no other kind, and what logs fingerprint) is a hash: never the key.
            return Credential(
                API_KEY_PREFIX + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest(), Kind.api_key, value
            )
    return None


def check_key(value: str, min_length: int, max_length: int) -> Reason | None:
    """``None`` if ``value`` may be a key; else why not (``Reason.malformed``), without any lookup.

    The plugin refuses a key shorter than ``defaultKeyLength`` before its lookup; one it would look
    up in vain (not visible ASCII, or longer than any key it makes) is refused here unread.
    """
    if len(value) < min_length or len(value) > max_length or not _KEY_ALPHABET.fullmatch(value):
        return Reason.malformed
    return None


def stored_key(value: str, *, hashing: bool = True) -> str:
    """The ``key`` column's value for a key: ``defaultKeyHasher`` (SHA-256, base64url, unpadded), or the key."""
    if not hashing:
        return value
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=").decode()


def key_digest(stored: str) -> str:
    """SHA-256 hex of a ``key`` column's value: the only name of a key in caches and notifications.

    The triggers compute the same (``encode(sha256(convert_to(key, 'UTF8')), 'hex')``), so even
    with ``disableKeyHashing`` no notification carries a usable key.
    """
    return hashlib.sha256(stored.encode()).hexdigest()


class ApiKeyRecord(msgspec.Struct, frozen=True, gc=False):
    """One ``apikey`` row joined to its user, as the judging needs it (times in epoch seconds)."""

    id: str
    user_id: str
    user: JSONObject  # the fields Better Auth returns, as get-session shows them
    banned_until: float = 0.0  # as ``Session.banned_until``
    role: str | None = None
    config_id: str | None = None
    enabled: bool | None = None
    expires_at: float | None = None
    expires_at_iso: str | None = None  # as the mock session shows it
    remaining: int | None = None
    refill_amount: int | None = None
    refill_interval_ms: int | None = None
    last_refill_at: float | None = None
    created_at: float = 0.0
    rate_limit_enabled: bool | None = None
    rate_limit_window_ms: int | None = None
    rate_limit_max: int | None = None
    request_count: int | None = None
    last_request: float | None = None


def judge_key(  # noqa: PLR0911  (one return per rule, in the plugin's order)
    key: ApiKeyRecord, now: float, *, config_id: str = "default", rate_limit: bool = True
) -> Reason:
    """The plugin's verdict on a key as its row stands at ``now`` (``validateApiKey``), read-only.

    ``config_id``: the configuration whose keys count; ``rate_limit``: the plugin's ``rateLimit.enabled``.
    """
    if not _same_config(key.config_id, config_id):
        return Reason.unknown_session  # INVALID_API_KEY, as for a key not found
    if key.enabled is False:
        return Reason.key_disabled
    if key.expires_at is not None and now > key.expires_at:
        return Reason.expired
    if key.remaining is not None and not _refill_due(key, now) and key.remaining <= 0:
        return Reason.key_usage_exceeded  # the plugin's guarded decrement finds nothing above 0
    if rate_limit and _rate_limited(key, now):
        return Reason.key_rate_limited
    if key.banned_until > now:
        return Reason.banned
    return Reason.ok


def _same_config(found: str | None, wanted: str) -> bool:
    """``configIdMatches``: null, undefined and ``"default"`` are one configuration."""
    if (not found or found == "default") and (not wanted or wanted == "default"):
        return True
    return found == wanted


def _refill_due(key: ApiKeyRecord, now: float) -> bool:
    """``consumeRemaining``: a refill is due once ``refillInterval`` has passed since the last one (or creation)."""
    if not key.refill_interval_ms or not key.refill_amount:
        return False
    since = key.last_refill_at if key.last_refill_at is not None else key.created_at
    return (now - since) * 1000 > key.refill_interval_ms


def _rate_limited(key: ApiKeyRecord, now: float) -> bool:
    """``evaluateRateLimit``'s deny: the window of the last recorded use is still open and spent."""
    if key.rate_limit_enabled is False or key.rate_limit_window_ms is None or key.rate_limit_max is None:
        return False
    if key.last_request is None:
        return False
    if (now - key.last_request) * 1000 > key.rate_limit_window_ms:
        return False  # the plugin would start a new window
    return (key.request_count or 0) >= key.rate_limit_max


def try_again_in_ms(key: ApiKeyRecord, now: float) -> int | None:
    """A rate-limited key's wait until its window closes (``evaluateRateLimit``'s ``tryAgainIn``, in ms)."""
    if key.last_request is None or key.rate_limit_window_ms is None:
        return None
    return math.ceil(key.rate_limit_window_ms - (now - key.last_request) * 1000)


def mock_session(
    key: ApiKeyRecord, now: float, *, expires_in: int, user_agent: str | None, ip_address: str | None
) -> Session:
    """The session the plugin makes up for a valid key (its hook's ``session``), without the token.

    ``createdAt`` and ``updatedAt`` are now; ``expiresAt`` is the key's, else now plus
    ``session.expiresIn`` taken as milliseconds (the plugin's ``getDate(expiresIn, "ms")``).
    """
    stamp = _iso(now)
    expires_at = key.expires_at if key.expires_at is not None else now + expires_in / 1000
    expires_iso = key.expires_at_iso if key.expires_at_iso is not None else _iso(expires_at)
    session = {
        "id": key.id,
        "userId": key.user_id,
        "userAgent": user_agent,
        "ipAddress": ip_address,
        "createdAt": stamp,
        "updatedAt": stamp,
        "expiresAt": expires_iso,
    }
    return Session(expires_at, key.banned_until, session, key.user, key.role)


def _iso(epoch_s: float) -> str:
    """JavaScript's ``toISOString()`` of an epoch time (milliseconds, ``Z``)."""
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# How Better Auth's get-session answers each refusal of a key (the plugin's APIError): status, code, message.
BETTER_AUTH_REFUSALS: dict[Reason, tuple[int, str, str]] = {
    Reason.unknown_session: (401, "INVALID_API_KEY", "Invalid API key."),
    Reason.malformed: (401, "INVALID_API_KEY", "Invalid API key."),
    Reason.key_disabled: (401, "KEY_DISABLED", "API Key is disabled"),
    Reason.expired: (401, "KEY_EXPIRED", "API Key has expired"),
    Reason.key_usage_exceeded: (429, "USAGE_EXCEEDED", "API Key has reached its usage limit"),
    Reason.key_rate_limited: (429, "RATE_LIMITED", "Rate limit exceeded."),
    # Not Better Auth's (it accepts a banned user's key): the gateway's own refusal, as for a session.
    Reason.banned: (401, "USER_BANNED", "User is banned"),
}
SHORT_KEY_REFUSAL = (403, "INVALID_API_KEY", "Invalid API key.")  # shorter than defaultKeyLength
