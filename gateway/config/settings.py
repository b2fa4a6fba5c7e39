"""One typed, frozen ``Settings``, read once from the environment.

Better Auth's own variable names are honoured (``DATABASE_URL``, ``BETTER_AUTH_SECRET``,
``BETTER_AUTH_SECRETS``, ``AUTH_SECRET``); every other setting is ``GATEWAY_<FIELD>``. Loading
reports *every* problem at once (``gateway check-config``) and rejects unknown ``GATEWAY_*``
names, so a typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote_plus, urlsplit

import msgspec

from gateway.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_ENV_PREFIX = "GATEWAY_"
_MIN_DB_TIMEOUT_S = 0.01
_INVALID = object()
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


class Secret(str):
    """A string whose ``repr`` and ``str`` never show its value (DSNs, signing secrets)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def reveal(self) -> str:
        """Return the real value; call it only where the value is used, never to log it."""
        return str.__str__(self)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of the gateway; field ``x`` is read from ``GATEWAY_X`` unless noted."""

    # Better Auth's names: DATABASE_URL; BETTER_AUTH_SECRETS (current first), else
    # BETTER_AUTH_SECRET, else AUTH_SECRET; REDIS_URL (optional: turns the shared tier on).
    database_url: Secret | None = None
    redis_url: Secret | None = None
    # Better Auth's secondaryStorage in Redis as the session store, instead of Postgres
    # (GATEWAY_SECONDARY_STORAGE_URL; see gateway.redis.secondary_storage).
    secondary_storage_url: Secret | None = None
    secrets: tuple[Secret, ...] = ()

    # Credentials.
    allow_weak_secret: bool = False  # development only: a short or Better Auth's public default secret
    cookie_prefix: str = "better-auth"
    session_cookie_name: str = ""  # advanced.cookies.session_token.name: used verbatim
    # Better Auth's base URL (its baseURL option; BETTER_AUTH_URL is read too): with secure_cookies
    # "auto", an https one means __Secure- cookie names, an http one plain names.
    base_url: str = ""
    # advanced.useSecureCookies: "auto" follows base_url, as Better Auth does; with no base URL,
    # __Secure- names (Better Auth's choice in production, and the one a sibling subdomain or
    # plain http cannot plant). Exactly one name is read, never both.
    secure_cookies: Literal["auto", "true", "false"] = "auto"
    accept_unsigned_bearer: bool = True  # bearer({requireSignature}) is off by default
    # session.cookieCache: trust a valid session_data cookie without a lookup (see gateway.credentials.cookie_cache)
    cookie_cache: Literal["off", "compact", "jwt", "jwe"] = "off"
    cookie_cache_version: str = "1"  # cookieCache.version
    cookie_cache_max_age_s: float = 300.0  # cookieCache.maxAge: how long a revocation must be remembered
    # The JWT plugin (see gateway.credentials.jwts): set the audience to accept its JWTs as bearer tokens.
    jwt_audience: str = ""  # the plugin's audience: by default Better Auth's base URL origin
    jwt_issuer: str = ""  # the plugin's issuer: by default the same origin (see jwt_claims)
    jwt_jwks_url: str = ""  # Better Auth's /api/auth/jwks; empty: read the jwks table
    jwt_jwks_table: str = "jwks"
    secondary_storage_prefix: str = "better-auth:"  # @better-auth/redis-storage's keyPrefix ("" for none)

    # Forward auth (see gateway.http.original and gateway.http.policy).
    trusted_proxies: str = "127.0.0.0/8,::1/128"  # whose X-Forwarded-*/X-Original-* count
    # The proxy in front: only the headers it sets decide the original request (gateway.http.original).
    proxy: Literal["", "nginx", "ingress-nginx", "traefik", "caddy", "envoy"] = ""
    login_url: str = ""  # where redirect mode sends browsers; also the Location of a 401
    redirect_param: str = "rd"
    redirect_hosts: str = ""  # hosts a return URL may name (".example.com": subdomains); default: the login URL's
    identity_headers: dict[str, str] = {}  # rename: user, email, name, session_id, role, groups
    remote_headers: bool = False  # also send Remote-User, Remote-Email, Remote-Name, Remote-Groups
    strip_credentials: bool = False  # answer Cookie (without Better Auth's) and an empty Authorization
    rules_file: str = ""

    # The failure budget (see gateway.http.budget): lookups that find no valid session, per client
    # address; past it an address's lookups wait their turn. 0 turns it off.
    rate_limit_per_minute: float = 60.0
    rate_limit_burst: int = 30
    rate_limit_exempt: str = ""  # CIDRs of trusted internal callers
    rate_limit_ipv4_prefix: int = 32  # an address counts by its network: IPv4 /32,
    rate_limit_ipv6_prefix: int = 64  # IPv6 /64 (one host's share)
    rate_limit_max_wait_s: float = 2.0  # a lookup waiting longer for its turn gets 429
    rate_limit_max_waiting: int = 64  # lookups of one address waiting at once; the oldest beyond get 429

    # Schema mapping (see gateway.postgres.schema).
    schema_preset: Literal["default", "prisma", "drizzle"] = "default"
    use_plural: bool = False
    db_schema: str = ""
    user_table: str = ""
    session_table: str = ""
    user_fields: dict[str, str] = {}
    session_fields: dict[str, str] = {}
    # What an answer may hold (see gateway.core.fields): Better Auth's core fields, those of the plugins
    # in use (GATEWAY_PLUGINS=admin,organization,...), the additionalFields it returns; less the
    # hidden ones. Any other column is never read into an answer.
    plugins: str = ""
    user_additional_fields: str = ""
    session_additional_fields: str = ""
    user_hidden_fields: str = ""
    session_hidden_fields: str = ""
    token_field: Literal["token", "id"] = "token"  # noqa: S105  (a column name) — "id": the legacy schema (Better Auth < 1.0)

    # In-process cache; negative entries remember unknown tokens briefly.
    l1_max_entries: int = 100_000
    l1_ttl_s: float = 30.0
    negative_max_entries: int = 10_000
    negative_ttl_s: float = 2.0  # capped at l1_ttl_s: never refuse longer than we would serve

    # Redis, shared by every worker and instance.
    redis_prefix: str = "bagw"
    l2_ttl_s: float = 300.0
    redis_timeout_s: float = 0.25
    redis_backoff_s: float = 1.0
    redis_pool_max_size: int = 8
    # How long a revoked token or user blocks writes in Redis: raised to 2 x (db + Redis timeouts),
    # the longest a lookup can take from reading Postgres to writing Redis, when shorter.
    redis_tombstone_s: float = 10.0

    # Invalidation: LISTEN for the triggers' NOTIFY (see gateway.postgres.triggers).
    listen: bool = True
    channel: str = "better_auth_gateway"
    listener_check_s: float = 1.0

    # Postgres.
    pool_max_size: int = 10
    db_timeout_s: float = 2.0
    retry_after_s: int = 5
    batch_max_size: int = 256  # most tokens in one MGET or one `= ANY($1)` query

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 8192
    max_header_bytes: int = 65536  # the whole request head; Better Auth's chunked cookies fit
    header_read_timeout_s: float = 10.0  # a client trickling its headers (slowloris) is cut off
    body_read_timeout_s: float = 5.0  # ... and one trickling a JSON body: 408, connection closed
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON lines
    log_decisions_sample: float = 0.0  # at info, the share of decisions logged (at debug: all)

    # Operations.
    metrics_port: int = 0  # 0: /metrics on the main port only; else also served on this port
    metrics_flush_s: float = 1.0
    startup_wait_s: float = 30.0  # how long startup waits for Postgres before serving 503s
    shutdown_grace_s: float = 10.0  # in-flight requests get this long after SIGTERM

    @property
    def secret(self) -> Secret:
        """The current secret: Better Auth signs cookies with this one only."""
        return self.secrets[0]

    @property
    def use_secure_cookies(self) -> bool:
        """Whether Better Auth's cookies carry the ``__Secure-`` prefix (``createCookieGetter``)."""
        if self.secure_cookies != "auto":
            return self.secure_cookies == "true"
        return not self.base_url.lower().startswith("http://")  # https, or no base URL: secure

    @property
    def base_origin(self) -> str:
        """The base URL's origin, as JavaScript's ``new URL(baseURL).origin`` (``""`` without one)."""
        return url_origin(self.base_url)

    @property
    def jwt_claims(self) -> tuple[str, str]:
        """The (audience, issuer) the JWT plugin's tokens must name; an empty audience: JWTs are not accepted.

        The jwt plugin's ``verifyJWT`` checks ``iss`` and ``aud`` against ``jwt.issuer`` and
        ``jwt.audience``, each by default the base URL's origin (Better Auth keeps
        ``options.baseURL`` as ``new URL(baseURL).origin``): the gateway does the same. The audience
        defaults only where the JWT path is asked for (``GATEWAY_JWT_ISSUER`` or
        ``GATEWAY_JWT_JWKS_URL`` set): accepting JWTs, which outlive a sign-out, is never implied.
        """
        origin = self.base_origin
        audience = self.jwt_audience or (origin if self.jwt_issuer or self.jwt_jwks_url else "")
        return audience, self.jwt_issuer or (origin if audience else "")

    @property
    def data_cookie_names(self) -> tuple[str, ...]:
        """The cookie cache's name (``session_data``; its chunks are ``<name>.N``): the one Better Auth reads."""
        prefix = "__Secure-" if self.use_secure_cookies else ""
        return (f"{prefix}{self.cookie_prefix}.session_data",)

    @property
    def cookie_names(self) -> tuple[str, ...]:
        """The session cookie's name: exactly the one Better Auth reads (``getSignedCookie``), never both.

        A plain-named cookie can be set by a sibling subdomain or over http, which a ``__Secure-``
        one cannot: on an https deployment, reading it would let such a cookie choose who the
        browser is signed in as.
        """
        prefix = "__Secure-" if self.use_secure_cookies else ""
        return (prefix + (self.session_cookie_name or f"{self.cookie_prefix}.session_token"),)


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    need: frozenset[str] = frozenset({"secret", "database"}),
) -> Settings:
    """Build ``Settings`` from ``environ`` (``os.environ`` if omitted) and keyword overrides.

    ``need`` names what the caller cannot work without (``"secret"``, ``"database"``): serving
    needs both; printing the trigger SQL needs neither.

    Raises:
        ConfigError: listing every missing, unknown or invalid setting, each naming its variable.
    """
    import os  # noqa: PLC0415  (only the edge reads the process environment)

    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    values: dict[str, object] = {}
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    _read_better_auth_names(env, values, problems)
    for name, raw in env.items():
        if not name.startswith(_ENV_PREFIX) or name.startswith("GATEWAY_TEST_"):
            continue
        field = name[len(_ENV_PREFIX) :].lower()
        if field not in fields or field in ("database_url", "redis_url", "secondary_storage_url", "secrets"):
            problems.append(f"{name}: unknown setting")
            continue
        value = _convert(name, raw, fields[field].type, problems)
        if value is not _INVALID:
            values[field] = value
    values.update(overrides or {})
    # Invalid values were left at their defaults, so the cross-field checks still run and
    # every problem is reported in one go.
    # Each value was converted to its field's type above.
    settings = Settings(**values)  # type: ignore[arg-type]
    problems.extend(validate(settings, need))
    if problems:
        raise ConfigError(problems)
    return settings


def _read_better_auth_names(env: dict[str, str], values: dict[str, object], problems: list[str]) -> None:
    for name in ("database_url", "redis_url"):
        alias = env.pop(f"GATEWAY_{name.upper()}", None)
        url = env.get(name.upper()) or alias
        if url:
            values[name] = Secret(url)
    if secondary := env.pop("GATEWAY_SECONDARY_STORAGE_URL", None):
        values["secondary_storage_url"] = Secret(secondary)
    if env.get("BETTER_AUTH_URL") and "GATEWAY_BASE_URL" not in env:  # Better Auth's env fallback
        values["base_url"] = env["BETTER_AUTH_URL"]
    if env.get("BETTER_AUTH_SECRETS"):
        values["secrets"] = _parse_versioned_secrets(env["BETTER_AUTH_SECRETS"], problems)
    elif env.get("BETTER_AUTH_SECRET") or env.get("AUTH_SECRET"):
        values["secrets"] = (Secret(env.get("BETTER_AUTH_SECRET") or env["AUTH_SECRET"]),)


def _parse_versioned_secrets(raw: str, problems: list[str]) -> tuple[Secret, ...]:
    """Parse Better Auth's ``"2:new,1:old"`` list; the first entry is the current secret."""
    out: list[Secret] = []
    for item in raw.split(","):
        version, sep, value = item.strip().partition(":")
        if not sep or not version.strip().isdigit() or not value:
            problems.append("BETTER_AUTH_SECRETS: expected '<version>:<secret>,...', e.g. '2:new,1:old'")
            return ()
        out.append(Secret(value))
    return tuple(out)


def _convert(name: str, raw: str, typ: object, problems: list[str]) -> object:
    if typ == dict[str, str]:
        return _parse_mapping(name, raw, problems)
    try:
        return msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(f"{name}: {exc} (got {raw!r})")
        return _INVALID


def _parse_mapping(name: str, raw: str, problems: list[str]) -> dict[str, str]:
    """Parse ``"field=column,field=column"``."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            problems.append(f"{name}: expected 'field=column,...', got {item!r}")
            continue
        out[key.strip()] = value.strip()
    return out


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
    problems.extend(
        f"{var}: {value!r} is not a valid SQL identifier (letters, digits, _ and $; at most 63)"
        for var, value in names.items()
        if value and not _IDENTIFIER.match(value)
    )
    problems.extend(_check_credentials(s))
    problems.extend(_check_fields(s))
    problems.extend(_check_numbers(s))
    return problems


def _check_stores(s: Settings, need: frozenset[str]) -> list[str]:
    """Where sessions are read from: Postgres, or Better Auth's Redis secondary storage; the shared tier."""
    problems = []
    secondary = s.secondary_storage_url.reveal() if s.secondary_storage_url is not None else None
    if s.database_url is None and "database" in need and secondary is None:
        problems.append("DATABASE_URL: not set (the Postgres database Better Auth writes its sessions to)")
    elif s.database_url is not None and not s.database_url.reveal().startswith(("postgres://", "postgresql://")):
        problems.append("DATABASE_URL: expected a postgres:// or postgresql:// URL")
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
    from gateway.core.fields import PLUGINS, names  # noqa: PLC0415

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


IDENTITY_FIELDS = ("user", "email", "name", "session_id", "role", "groups")


def _check_forward_auth(s: Settings) -> list[str]:
    from gateway.http.addresses import parse_networks  # noqa: PLC0415
    from gateway.http.policy import load_rules  # noqa: PLC0415

    problems = []
    for name, value in (
        ("GATEWAY_TRUSTED_PROXIES", s.trusted_proxies),
        ("GATEWAY_RATE_LIMIT_EXEMPT", s.rate_limit_exempt),
    ):
        try:
            parse_networks(value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
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
    if s.rules_file:
        try:
            load_rules(s.rules_file)
        except ValueError as exc:
            problems.append(f"GATEWAY_RULES_FILE: {exc}")
        if not s.proxy:
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


def url_origin(url: str) -> str:
    """``new URL(url).origin``: scheme and host lowercased, a default port dropped; ``""`` if unreadable."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return ""
    host = f"[{host}]" if ":" in host else host
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def describe(s: Settings) -> dict[str, object]:
    """Return the effective settings with every secret masked, for logs and ``check-config``."""
    out = msgspec.structs.asdict(s)
    out["database_url"] = mask_dsn(s.database_url.reveal()) if s.database_url else None
    out["redis_url"] = mask_dsn(s.redis_url.reveal()) if s.redis_url else None
    secondary = s.secondary_storage_url
    out["secondary_storage_url"] = mask_dsn(secondary.reveal()) if secondary else None
    out["secrets"] = [f"<{len(x)} chars>" for x in s.secrets]
    out["session_cookie_read"] = s.cookie_names[0]  # the one name, as secure_cookies and base_url decide
    return out


def cookie_note(s: Settings) -> str | None:
    """What ``check-config`` says when the cookie name was chosen without a base URL to follow."""
    if s.secure_cookies != "auto" or s.base_url:
        return None
    return (
        f"reading the cookie {s.cookie_names[0]} only: no base URL is set (GATEWAY_BASE_URL or BETTER_AUTH_URL), "
        "so the __Secure- name Better Auth uses in production is assumed; for a Better Auth served over "
        "http, set its base URL or GATEWAY_SECURE_COOKIES=false"
    )


# Query parameters of a DSN that may hold a secret: libpq's password and sslpassword,
# redis-py's password and sentinel_password, and anything else named like a credential.
_SECRET_PARAM = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)
_MASK = "****"


def mask_dsn(url: str) -> str:
    """``url`` with its userinfo password and every secret-looking query parameter masked.

    Anything that can't be split unambiguously is hidden whole: a DSN is printed only to help,
    never at the price of a password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # A password holding an unencoded "/", "?" or "#" ends the netloc early: where the
        # password ends can't be told, so nothing after the scheme is shown.
        return f"{parts.scheme}://{_MASK}"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
    params = [_mask_param(p) for p in parts.query.split("&")] if parts.query else []
    query = "?" + "&".join(params) if parts.query else ""
    return f"{parts.scheme}://{userinfo}{at}{hosts}{parts.path}{query}" + ("#" + _MASK if parts.fragment else "")


def _mask_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    # Names are matched decoded (asyncpg and redis-py decode them): "pass%77ord" is "password".
    return name + eq + _MASK if _SECRET_PARAM.search(unquote_plus(name)) else param
