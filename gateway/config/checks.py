"""``validate``: every cross-field problem of a ``Settings``, all at once, each naming its variable.

Only what the settings alone can tell is checked here; the HTTP adapter checks its rules file
itself (``gateway.http.policy.rules_file_problems``), and ``gateway check-config`` runs both.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.config import field_headers
from gateway.config.api_key_checks import api_key_problems
from gateway.config.refresh import refresh_problems
from gateway.core.fields import IDENTITY_FIELDS, PLUGINS, names

if TYPE_CHECKING:
    from gateway.config.settings import Secret, Settings

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_MIN_DB_TIMEOUT_S = 0.01
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def validate(s: Settings, need: frozenset[str] = frozenset({"secret", "database"})) -> list[str]:
    """Return every cross-field problem of ``s`` (empty when it is usable)."""
    problems: list[str] = []
    if "secret" in need and not s.allow_weak_secret:
        problems.extend(_weak_secrets(s.secrets))
    if not s.secrets and "secret" in need:
        problems.append(
            "BETTER_AUTH_SECRET: not set (also read: BETTER_AUTH_SECRETS, AUTH_SECRET); "
            "use the secret your Better Auth server signs cookies with"
        )
    problems.extend(_check_stores(s, need))
    problems.extend(_check_forward_auth(s))
    problems.extend(field_headers.problems(s))
    if not _IDENTIFIER.match(s.channel):
        problems.append("GATEWAY_CHANNEL: letters, digits and _ only, at most 63")
    if not re.fullmatch(r"[A-Za-z0-9_.\-:]{1,64}", s.redis_prefix):
        problems.append("GATEWAY_REDIS_PREFIX: letters, digits, '.', '-', '_' and ':' only")
    names = {
        "GATEWAY_DB_SCHEMA": s.db_schema,
        "GATEWAY_USER_TABLE": s.user_table,
        "GATEWAY_SESSION_TABLE": s.session_table,
        "GATEWAY_JWT_JWKS_TABLE": s.jwt_jwks_table,
    }
    names |= {f"GATEWAY_USER_FIELDS[{k}]": v for k, v in s.user_fields.items()}
    names |= {f"GATEWAY_SESSION_FIELDS[{k}]": v for k, v in s.session_fields.items()}
    names |= {"GATEWAY_MEMBER_TABLE": s.member_table}  # organizations
    names |= {f"GATEWAY_MEMBER_FIELDS[{k}]": v for k, v in s.member_fields.items()}
    problems.extend(
        f"{var}: {value!r} is not a valid SQL identifier (letters, digits, _ and $; at most 63)"
        for var, value in names.items()
        if value and not _IDENTIFIER.match(value)
    )
    problems.extend(_check_credentials(s))
    problems.extend(_check_fields(s))
    problems.extend(_check_numbers(s))
    problems.extend(api_key_problems(s))
    problems.extend(refresh_problems(s))
    problems.extend(_check_organizations(s))
    return problems


# Organizations (issue 19): the member's role is read with the session, from Postgres alone.
_MEMBER_FIELDS = frozenset({"id", "organizationId", "userId", "role", "createdAt"})


def _check_organizations(s: Settings) -> list[str]:
    """Where ``GATEWAY_ORGANIZATIONS=on`` can read the member's role, and the member table's mapping."""
    problems = [
        f"GATEWAY_MEMBER_FIELDS: {field!r} is not a member field ({', '.join(sorted(_MEMBER_FIELDS))})"
        for field in s.member_fields
        if field not in _MEMBER_FIELDS
    ]
    if s.organizations != "on":
        return problems
    if s.secondary_storage_url is not None:
        problems.append(
            "GATEWAY_ORGANIZATIONS: on needs sessions read from Postgres (the member table), "
            "not from GATEWAY_SECONDARY_STORAGE_URL"
        )
    if s.cookie_cache != "off":
        problems.append(
            "GATEWAY_ORGANIZATIONS: on needs GATEWAY_COOKIE_CACHE=off (Better Auth's session_data "
            "cookie holds the active organization, not the member's role in it)"
        )
    return problems


def _check_stores(s: Settings, need: frozenset[str]) -> list[str]:
    """Where sessions are read from: Postgres, or Better Auth's Redis secondary storage; the shared tier."""
    problems = []
    secondary = s.secondary_storage_url.reveal() if s.secondary_storage_url is not None else None
    if s.database_url is None and "database" in need and secondary is None:
        problems.append("DATABASE_URL: not set (the Postgres database Better Auth writes its sessions to)")
    for var, pg in (
        ("DATABASE_URL", s.database_url),
        ("GATEWAY_READ_DATABASE_URL", s.read_database_url),
        ("GATEWAY_LISTEN_DATABASE_URL", s.listen_database_url),
    ):
        if pg is not None and not pg.reveal().startswith(("postgres://", "postgresql://")):
            problems.append(f"{var}: expected a postgres:// or postgresql:// URL")
    if s.database_url is None and (s.read_database_url or s.listen_database_url) and not problems:
        problems.append("DATABASE_URL: needed with GATEWAY_READ/LISTEN_DATABASE_URL (the primary)")
    for var, url in (("REDIS_URL", s.redis_url), ("GATEWAY_SECONDARY_STORAGE_URL", secondary)):
        if url is not None and not url.startswith(REDIS_SCHEMES):
            problems.append(f"{var}: expected one of {', '.join(s + '://' for s in REDIS_SCHEMES)}")
    if secondary is not None and "+cluster://" in secondary:
        problems.append("GATEWAY_SECONDARY_STORAGE_URL: Redis Cluster is not supported (one server, or Sentinel)")
    if secondary is not None and s.redis_url is not None:
        problems.append("REDIS_URL: not used with GATEWAY_SECONDARY_STORAGE_URL (Better Auth's Redis is the store)")
    return problems


# Fields every answer carries (Better Auth's own identity of a session): they can't be hidden.
_NEEDED = {
    "GATEWAY_SESSION_HIDDEN_FIELDS": {"id", "userId", "expiresAt", "token"},
    "GATEWAY_USER_HIDDEN_FIELDS": {"id"},
}


def _check_fields(s: Settings) -> list[str]:
    """The plugins named, and the additional and hidden fields (see ``gateway.core.fields``)."""
    problems = [
        f"GATEWAY_PLUGINS: {name!r} is not a Better Auth plugin the gateway knows (known: {', '.join(PLUGINS)}); "
        "list its user and session fields in GATEWAY_USER_ADDITIONAL_FIELDS / GATEWAY_SESSION_ADDITIONAL_FIELDS"
        for name in names(s.plugins)
        if name not in PLUGINS
    ]
    for model, extra, hidden in (
        ("SESSION", s.session_additional_fields, s.session_hidden_fields),
        ("USER", s.user_additional_fields, s.user_hidden_fields),
    ):
        var = f"GATEWAY_{model}_HIDDEN_FIELDS"
        needed = sorted(_NEEDED[var] & set(names(hidden)))
        if needed:
            problems.append(f"{var}: every answer carries {', '.join(needed)}; they can't be hidden")
        both = sorted(set(names(extra)) & set(names(hidden)))
        if both:
            problems.append(f"GATEWAY_{model}_ADDITIONAL_FIELDS: {', '.join(both)} also hidden; say one or the other")
        problems.extend(
            f"GATEWAY_{model}_{kind}_FIELDS: {name!r} is not a field name (letters, digits, _ and $)"
            for kind, text in (("ADDITIONAL", extra), ("HIDDEN", hidden))
            for name in names(text)
            if not _IDENTIFIER.match(name)
        )
    return problems


def _check_credentials(s: Settings) -> list[str]:
    """Cookie names and the JWT plugin's settings."""
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", s.cookie_prefix):
        problems.append("GATEWAY_COOKIE_PREFIX: letters, digits, '.', '-' and '_' only")
    if s.session_cookie_name and not re.fullmatch(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]{1,128}", s.session_cookie_name):
        problems.append("GATEWAY_SESSION_COOKIE_NAME: not a valid cookie name")
    if s.base_url and not s.base_url.lower().startswith(("http://", "https://")):
        problems.append("GATEWAY_BASE_URL: expected an http:// or https:// URL (Better Auth's baseURL)")
    if s.jwt_jwks_url and not s.jwt_jwks_url.startswith(("http://", "https://")):
        problems.append("GATEWAY_JWT_JWKS_URL: expected an http:// or https:// URL (Better Auth's /api/auth/jwks)")
    if (s.jwt_issuer or s.jwt_jwks_url) and not s.jwt_claims[0]:
        problems.append(
            "GATEWAY_JWT_AUDIENCE: needed to accept the JWT plugin's tokens "
            "(or GATEWAY_BASE_URL / BETTER_AUTH_URL, whose origin is the plugin's default audience)"
        )
    return problems


# Better Auth's fallback when no secret is set (packages/better-auth/src/utils/constants.ts): public.
BETTER_AUTH_DEFAULT_SECRET = "better-auth-secret-12345678901234567890"  # noqa: S105
MIN_SECRET_LENGTH = 32


def _weak_secrets(secrets: tuple[Secret, ...]) -> list[str]:
    problems = []
    for i, secret in enumerate(secrets):
        name = "BETTER_AUTH_SECRET" if len(secrets) == 1 else f"BETTER_AUTH_SECRETS[{i}]"
        if secret.reveal() == BETTER_AUTH_DEFAULT_SECRET:
            problems.append(
                f"{name}: Better Auth's public default secret (GATEWAY_ALLOW_WEAK_SECRET=true for development)"
            )
        elif len(secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"{name}: shorter than {MIN_SECRET_LENGTH} characters (GATEWAY_ALLOW_WEAK_SECRET=true for development)"
            )
    return problems


def _check_forward_auth(s: Settings) -> list[str]:
    """The login URL, the identity headers' names, and what a rules file needs."""
    problems = []
    if s.login_url and not re.match(r"^https?://[^/?#]+", s.login_url):
        problems.append("GATEWAY_LOGIN_URL: expected an absolute http(s) URL")
    unknown = set(s.identity_headers) - set(IDENTITY_FIELDS)
    if unknown:
        problems.append(f"GATEWAY_IDENTITY_HEADERS: unknown field(s) {sorted(unknown)}; known: {list(IDENTITY_FIELDS)}")
    problems.extend(
        f"GATEWAY_IDENTITY_HEADERS: {name!r} is not a valid header name"
        for name in s.identity_headers.values()
        if not re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", name)
    )
    if s.rules_file and not s.proxy:
        # Rules judge the original request, and which headers describe it depends on the proxy.
        problems.append(
            "GATEWAY_RULES_FILE needs GATEWAY_PROXY: set it to the proxy in front "
            "(nginx, ingress-nginx, traefik, caddy or envoy), whose own headers alone say what the "
            "original request was"
        )
    return problems


def _check_numbers(s: Settings) -> list[str]:
    checks = [
        ("GATEWAY_L1_MAX_ENTRIES", s.l1_max_entries >= 0, "must be >= 0 (0 turns the cache off)"),
        ("GATEWAY_L1_TTL_S", s.l1_ttl_s >= 0, "must be >= 0"),
        ("GATEWAY_NEGATIVE_MAX_ENTRIES", s.negative_max_entries >= 0, "must be >= 0 (0 turns negative entries off)"),
        # A negative entry outliving a positive one would refuse a session longer than we'd serve one.
        ("GATEWAY_NEGATIVE_TTL_S", s.negative_ttl_s >= 0, "must be >= 0"),
        ("GATEWAY_L2_TTL_S", s.l2_ttl_s > 0, "must be > 0"),
        ("GATEWAY_REDIS_TIMEOUT_S", s.redis_timeout_s >= _MIN_DB_TIMEOUT_S, "must be >= 0.01"),
        ("GATEWAY_REDIS_BACKOFF_S", s.redis_backoff_s > 0, "must be > 0"),
        ("GATEWAY_REDIS_POOL_MAX_SIZE", s.redis_pool_max_size >= 1, "must be >= 1"),
        ("GATEWAY_REDIS_TOMBSTONE_S", s.redis_tombstone_s > 0, "must be > 0"),
        ("GATEWAY_BATCH_MAX_SIZE", s.batch_max_size >= 1, "must be >= 1"),
        ("GATEWAY_LISTENER_CHECK_S", s.listener_check_s > 0, "must be > 0"),
        ("GATEWAY_LOG_DECISIONS_SAMPLE", 0 <= s.log_decisions_sample <= 1, "must be between 0 and 1"),
        ("GATEWAY_METRICS_PORT", 0 <= s.metrics_port <= 65535, "must be 0 or a TCP port"),  # noqa: PLR2004
        ("GATEWAY_METRICS_FLUSH_S", s.metrics_flush_s > 0, "must be > 0"),
        ("GATEWAY_STARTUP_WAIT_S", s.startup_wait_s >= 0, "must be >= 0"),
        ("GATEWAY_SHUTDOWN_GRACE_S", s.shutdown_grace_s >= 0, "must be >= 0"),
        ("GATEWAY_RULES_RELOAD_S", s.rules_reload_s >= 0, "must be >= 0 (0: reload on SIGHUP only)"),
        ("GATEWAY_POOL_MAX_SIZE", s.pool_max_size >= 1, "must be >= 1"),
        ("GATEWAY_DB_TIMEOUT_S", s.db_timeout_s >= _MIN_DB_TIMEOUT_S, "must be >= 0.01"),
        ("GATEWAY_RETRY_AFTER_S", s.retry_after_s >= 1, "must be >= 1"),
        ("GATEWAY_PORT", 0 <= s.port <= 65535, "must be a TCP port"),  # noqa: PLR2004
        ("GATEWAY_WORKERS", s.workers >= 1, "must be >= 1"),
        ("GATEWAY_MAX_BODY_BYTES", s.max_body_bytes >= 64, "must be >= 64"),  # noqa: PLR2004
        ("GATEWAY_MAX_HEADER_BYTES", s.max_header_bytes >= 4096, "must be >= 4096"),  # noqa: PLR2004
        ("GATEWAY_HEADER_READ_TIMEOUT_S", s.header_read_timeout_s > 0, "must be > 0"),
        ("GATEWAY_BODY_READ_TIMEOUT_S", s.body_read_timeout_s > 0, "must be > 0"),
        ("GATEWAY_RATE_LIMIT_PER_MINUTE", s.rate_limit_per_minute >= 0, "must be >= 0 (0 turns it off)"),
        ("GATEWAY_RATE_LIMIT_BURST", s.rate_limit_burst >= 1, "must be >= 1"),
        ("GATEWAY_RATE_LIMIT_IPV4_PREFIX", 8 <= s.rate_limit_ipv4_prefix <= 32, "must be between 8 and 32"),  # noqa: PLR2004
        ("GATEWAY_RATE_LIMIT_IPV6_PREFIX", 16 <= s.rate_limit_ipv6_prefix <= 128, "must be between 16 and 128"),  # noqa: PLR2004
        ("GATEWAY_RATE_LIMIT_MAX_WAIT_S", s.rate_limit_max_wait_s > 0, "must be > 0"),
        ("GATEWAY_RATE_LIMIT_MAX_WAITING", s.rate_limit_max_waiting >= 1, "must be >= 1"),
    ]
    problems = [f"{name}: {why}" for name, ok, why in checks if not ok]
    refill_s = 60 / s.rate_limit_per_minute if s.rate_limit_per_minute > 0 else 0.0
    if s.rate_limit_max_wait_s < refill_s:
        # A lookup waiting for its address's next token would always give up first.
        problems.append(
            f"GATEWAY_RATE_LIMIT_MAX_WAIT_S: must be at least 60 / GATEWAY_RATE_LIMIT_PER_MINUTE ({refill_s:g} s), "
            "the time one token takes to come back"
        )
    return problems
