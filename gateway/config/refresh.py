"""The sliding refresh's settings checked together (``GATEWAY_SESSION_*``, ``GATEWAY_COOKIE_DOMAIN``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.settings import Settings

# better-call refuses to write a cookie whose Max-Age is over 400 days (RFC 6265bis): Better Auth
# with a longer expiresIn throws on every sign-in, so no deployment the gateway follows has one.
MAX_AGE_LIMIT_S = 34_560_000
# A Domain attribute: a host name, nothing that could end the attribute or start another.
_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?")


def refresh_problems(s: Settings) -> list[str]:
    """Every problem of the sliding refresh's settings, each naming its variable."""
    problems = []
    if not 1 <= s.session_expires_in_s <= MAX_AGE_LIMIT_S:
        problems.append(f"GATEWAY_SESSION_EXPIRES_IN_S: must be between 1 and {MAX_AGE_LIMIT_S} (400 days)")
    if s.session_update_age_s < 0:
        problems.append("GATEWAY_SESSION_UPDATE_AGE_S: must be >= 0 (0: every read slides the session)")
    if s.cookie_domain and not _DOMAIN.fullmatch(s.cookie_domain):
        problems.append(
            "GATEWAY_COOKIE_DOMAIN: a host name (letters, digits, '-' and '.'), as crossSubDomainCookies.domain"
        )
    return problems


def refresh_mode(s: Settings) -> str:
    """Where the gateway slides sessions, as it will run: ``off`` where it cannot write to Better Auth's table.

    Sessions in secondary storage (Redis) live where Better Auth alone rewrites them; Better
    Auth's ``disableSessionRefresh`` turns sliding off everywhere.
    """
    if s.secondary_storage_url is not None or s.session_disable_refresh:
        return "off"
    return s.session_refresh
