"""The one typed, frozen ``Settings`` and the ``Secret`` its credentials are wrapped in.

Every value is parsed to its final type when it is loaded (``gateway.config.environment``):
networks are ``ipaddress`` networks, lists are tuples, and the fields an answer may hold are
worked out once (``returned_fields``), so no adapter parses a setting again.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from gateway.config.describe import url_origin
from gateway.core.fields import Fields, returned_fields
from gateway.core.networks import Network  # noqa: TC001  (msgspec reads the field types at runtime)

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
CORE_FIELDS = returned_fields("", "", "", "", "")  # no plugin, nothing added, nothing hidden


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
    # Postgres by role (issue 16): lookups on a replica (misses checked on DATABASE_URL, the
    # primary); LISTEN on the primary itself, never through a pooler.
    read_database_url: Secret | None = None
    listen_database_url: Secret | None = None
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

    # API keys (@better-auth/api-key with enableSessionForAPIKeys; see gateway.credentials.api_keys):
    # a request carrying one of the headers is judged by its key, before any session credential.
    api_keys: Literal["off", "on"] = "off"
    api_key_headers: tuple[str, ...] = ("x-api-key",)  # the plugin's apiKeyHeaders, first non-empty wins
    api_key_table: str = ""  # the plugin's modelName: apikey (apikeys with use_plural)
    api_key_fields: dict[str, str] = {}  # custom column names: referenceId=owner_id,...
    api_key_disable_hashing: bool = False  # the plugin's disableKeyHashing: the key column holds the key itself
    api_key_min_length: int = 64  # the plugin's defaultKeyLength: a shorter key is refused unread (403)
    api_key_max_length: int = 512  # longer is garbage, refused unread (the plugin would look it up)
    api_key_config_id: str = "default"  # the configId whose keys count (the plugin's configId matching)
    api_key_rate_limit: bool = True  # the plugin's rateLimit.enabled: honour the window its own uses recorded
    api_key_session_expires_in: int = 604800  # Better Auth's session.expiresIn, which the plugin adds as ms

    # Forward auth (see gateway.http.original and gateway.http.policy).
    trusted_proxies: tuple[Network, ...] = LOOPBACK  # whose X-Forwarded-*/X-Original-* count (CIDRs)
    # The proxy in front: only the headers it sets decide the original request (gateway.http.original).
    proxy: Literal["", "nginx", "ingress-nginx", "traefik", "caddy", "envoy"] = ""
    login_url: str = ""  # where redirect mode sends browsers; also the Location of a 401
    redirect_param: str = "rd"
    # Hosts a return URL may name, lower case (".example.com": subdomains); by default the login URL's.
    redirect_hosts: tuple[str, ...] = ()
    identity_headers: dict[str, str] = {}  # rename: user, email, name, session_id, role, groups
    remote_headers: bool = False  # also send Remote-User, Remote-Email, Remote-Name, Remote-Groups
    # Any field as a header (issue 19; gateway.config.field_headers): "user.tenantId=x-tenant-id,..."
    # sends a returned user or session field as that header of every 200, empty when null.
    field_headers: dict[str, str] = {}
    strip_credentials: bool = False  # answer Cookie (without Better Auth's) and an empty Authorization
    rules_file: str = ""
    rules_reload_s: float = 2.0  # how often the rules file is read again for a change; 0: only on SIGHUP

    # The failure budget (see gateway.http.budget): lookups that find no valid session, per client
    # address; past it an address's lookups wait their turn. 0 turns it off.
    rate_limit_per_minute: float = 60.0
    rate_limit_burst: int = 30
    rate_limit_exempt: tuple[Network, ...] = ()  # CIDRs of trusted internal callers
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
    # Worked out from the five above when loading (not a variable of its own).
    returned_fields: Fields = CORE_FIELDS

    # Organizations (issue 19; see gateway.postgres.organizations): the session's active
    # organization and the member's role in it, read from the organization plugin's member table
    # in the session lookup (one LEFT JOIN, only when on), for identity headers and allowed_org_roles.
    organizations: Literal["on", "off"] = "off"
    member_table: str = ""  # the member model's table: by default member (members with use_plural)
    member_fields: dict[str, str] = {}  # field=column, as for the session and user tables

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
    # auto: `serve` and `demo` install (or upgrade) the triggers at startup where the role may;
    # never: someone else does (`gateway install-triggers`, a migration, a Kubernetes Job).
    install_triggers: Literal["auto", "never"] = "auto"
    channel: str = "better_auth_gateway"
    listener_check_s: float = 1.0

    # Postgres.
    pool_max_size: int = 10
    db_timeout_s: float = 2.0
    # PgBouncer (transaction mode) in front of lookups: auto (detect), true, false, or prepared
    # (1.21+ with max_prepared_statements: asyncpg keeps its statement cache).
    db_pgbouncer: Literal["auto", "true", "false", "prepared"] = "auto"
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

    # Sliding refresh (issue 19; gateway.lookup.refresh): Better Auth's session.expiresIn, updateAge,
    # disableSessionRefresh and deferSessionRefresh, and where the gateway slides a due session:
    # off (read-only: never writes), get-session (as Better Auth does), or all (/validate and
    # /v1/validate too: the row slides, set-auth-token is answered). Cookies it sets carry
    # cookie_domain (advanced.crossSubDomainCookies.domain) when set.
    session_refresh: Literal["off", "get-session", "all"] = "get-session"
    session_expires_in_s: int = 604800
    session_update_age_s: int = 86400
    session_disable_refresh: bool = False
    session_defer_refresh: bool = False
    cookie_domain: str = ""
    # Observability (issue 20): one access line per decided request; X-Request-ID on /validate answers.
    access_log: Literal["off", "on"] = "off"
    request_id_header: Literal["off", "on"] = "off"

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
