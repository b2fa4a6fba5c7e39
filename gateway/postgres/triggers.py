"""The SQL that makes Postgres tell every gateway, within milliseconds, what to forget.

Triggers on Better Auth's session and user tables ``NOTIFY`` one channel with payloads that carry
nothing usable to whoever can ``LISTEN``:

- ``s:<sha256(token) hex>``: a session was deleted (sign-out, every revoke, ban, password change,
  user deletion), or updated in a way that matters: ``expiresAt`` moved *earlier* (preserve mode's
  revocation) or any other column changed (token, user, active organization…). A sliding refresh,
  which only moves ``expiresAt`` later and touches ``updatedAt``, says nothing;
- ``u:<user id>``: a user was deleted, or updated in any column but ``updatedAt`` (ban, e-mail,
  name, role…): every cached session of that user goes;
- ``*``: a table was truncated: forget everything;
- ``k:<sha256(key column) hex>`` (with ``GATEWAY_API_KEYS=on``): an API key was deleted, or updated
  in a way that changes a verdict (``api_key_sql``); ``k:*``: the ``apikey`` table was truncated.

The objects carry a version in their names (``_v1``): installing a version also removes the
triggers and functions of older ones found on the two tables (``STATUS_SQL``), in the same
transaction, so an upgrade is one step. Installing is idempotent (one transaction; ``CREATE OR
REPLACE`` and ``DROP … IF EXISTS``) and serialised by an advisory lock, so instances starting
together do not collide.

Where they are absent, nothing tells the gateway of a revocation: the caches then bound staleness
by themselves (``staleness_bound_s``).

Permissions: installing needs ``CREATE`` on the schema and ownership of the two tables (or the
``TRIGGER`` privilege on them; ``pg_notify`` needs nothing). The gateway itself needs only
``CONNECT``, and ``SELECT`` on the two tables; ``LISTEN`` needs no privilege.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from gateway.postgres.schema import quote

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.config import Settings
    from gateway.postgres.schema import Mapping

VERSION = 2  # 2: the API key plugin's table (its block below)
# Without triggers, the longest a revoked session stays served from the LRU (the Redis tier is
# bypassed then: its values live minutes). Short enough that a user signing out and retrying
# sees it refused; long enough that a hot session costs each worker one query per 5 s.
UNTRIGGERED_TTL_S = 5.0
_LOCK = 0x6761_7465_7761_7901  # pg_advisory_xact_lock key: one installer at a time
_NAME = re.compile(r"gateway_(session|user|flush|apikey|apikeyflush)_notify_v([0-9]+)")


def names(version: int = VERSION) -> tuple[str, str, str]:
    """The session, user and flush function (and trigger) names of a version."""
    return (f"gateway_session_notify_v{version}", f"gateway_user_notify_v{version}", f"gateway_flush_notify_v{version}")


SESSION_FUNCTION, USER_FUNCTION, FLUSH_FUNCTION = names()


def staleness_bound_s(settings: Settings) -> float:
    """How long a revoked session may still be accepted where no trigger tells of it.

    The LRU's TTL capped at ``UNTRIGGERED_TTL_S``; with the cookie cache on, a cookie's own window
    if longer (Better Auth's signed cookie is believed until it expires).
    """
    bound = min(settings.l1_ttl_s, UNTRIGGERED_TTL_S)
    if settings.cookie_cache != "off":
        bound = max(bound, settings.cookie_cache_max_age_s)
    return bound


def _qualified(m: Mapping, name: str) -> str:
    return (quote(m.db_schema) + "." if m.db_schema else "") + quote(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def install_sql(
    m: Mapping, channel: str, *, version: int = VERSION, older: Iterable[Installed] = (), lock_timeout_ms: int = 0
) -> str:
    """The SQL that installs (or reinstalls) the functions and triggers, as one transaction.

    ``older``: triggers of other versions found (``Status.older``), removed in the same transaction.
    ``lock_timeout_ms``: give up rather than wait longer for the tables' locks (0: wait).
    ``version``: for tests, which install an older version by hand.
    """
    s, u, ch = m.session, m.user, _literal(channel)
    token, expires = quote(s.column(m.token_field)), s.column("expiresAt")
    unchanged_s = f"- {_literal(expires)} - {_literal(s.column('updatedAt'))}"
    unchanged_u = f"- {_literal(u.column('updatedAt'))}"
    digest = f"encode(sha256(convert_to(OLD.{token}::text, 'UTF8')), 'hex')"
    session_fn, user_fn, flush_fn = names(version)
    fn_s, fn_u, fn_f = (_qualified(m, n) for n in (session_fn, user_fn, flush_fn))
    mark = _literal(f"better-auth-gateway invalidation triggers v{version}")
    return f"""BEGIN;
SET LOCAL lock_timeout = {int(lock_timeout_ms)};
SELECT pg_advisory_xact_lock({_LOCK});
CREATE OR REPLACE FUNCTION {fn_s}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
BEGIN
  IF TG_OP = 'DELETE'
     OR NEW.{quote(expires)} < OLD.{quote(expires)}
     OR (to_jsonb(NEW) {unchanged_s}) IS DISTINCT FROM (to_jsonb(OLD) {unchanged_s}) THEN
    PERFORM pg_notify({ch}, 's:' || {digest});
  END IF;
  RETURN NULL;
END
$gateway$;
CREATE OR REPLACE FUNCTION {fn_u}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
BEGIN
  IF TG_OP = 'DELETE' OR (to_jsonb(NEW) {unchanged_u}) IS DISTINCT FROM (to_jsonb(OLD) {unchanged_u}) THEN
    PERFORM pg_notify({ch}, 'u:' || OLD.{quote(u.column("id"))}::text);
  END IF;
  RETURN NULL;
END
$gateway$;
CREATE OR REPLACE FUNCTION {fn_f}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
BEGIN
  PERFORM pg_notify({ch}, '*');
  RETURN NULL;
END
$gateway$;
COMMENT ON FUNCTION {fn_s}() IS {mark};
{_trigger(session_fn, s.name, fn_s, "AFTER UPDATE OR DELETE", "ROW")}
{_trigger(user_fn, u.name, fn_u, "AFTER UPDATE OR DELETE", "ROW")}
{_trigger(flush_fn, s.name, fn_f, "AFTER TRUNCATE", "STATEMENT")}
{_trigger(flush_fn, u.name, fn_f, "AFTER TRUNCATE", "STATEMENT")}
{api_key_sql(m, ch, version)}{_drops(m, older)}COMMIT;
"""  # noqa: S608  (identifiers quoted, literals escaped)


def _drops(m: Mapping, older: Iterable[Installed]) -> str:
    """Drop other versions' triggers, then their functions (named as the catalogue spells them)."""
    found = list(older)
    tables = {True: m.session.name, False: m.user.name}
    lines = [f"DROP TRIGGER IF EXISTS {quote(t.name)} ON {_table_of(m, t) or tables[t.on_session]};" for t in found]
    lines += [f"DROP FUNCTION IF EXISTS {f};" for f in dict.fromkeys(t.function for t in found)]
    return "".join(line + "\n" for line in lines)


def _trigger(name: str, table: str, function: str, when: str, each: str) -> str:
    return (
        f"DROP TRIGGER IF EXISTS {quote(name)} ON {table};\n"
        f"CREATE TRIGGER {quote(name)} {when} ON {table} FOR EACH {each} EXECUTE FUNCTION {function}();"
    )


def uninstall_sql(m: Mapping) -> str:
    """The SQL that removes every trigger and function ``install_sql`` creates."""
    drops = [f"DROP TRIGGER IF EXISTS {quote(n)} ON {t};" for n, t in _triggers(m)]
    # The API key function only where its triggers are known to go too (a trigger left would hold it).
    functions = (*names(), api_key_names()[0]) if m.api_key is not None else names()
    drops += [f"DROP FUNCTION IF EXISTS {_qualified(m, n)}();" for n in functions]
    return "BEGIN;\n" + "\n".join(drops) + "\nCOMMIT;\n"


def _triggers(m: Mapping) -> list[tuple[str, str]]:
    return [
        (SESSION_FUNCTION, m.session.name),
        (USER_FUNCTION, m.user.name),
        (FLUSH_FUNCTION, m.session.name),
        (FLUSH_FUNCTION, m.user.name),
    ] + ([(name, m.api_key.name) for name in api_key_names()] if m.api_key is not None else [])


# The gateway's triggers (any version) on the tables ($1 the session table, $2 the user table, $3
# the API key table or NULL, as ``Table.name`` spells them); none if a table is missing.
STATUS_SQL = r"""SELECT t.tgname, p.oid::regprocedure::text, t.tgrelid = to_regclass($1)
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND t.tgrelid IN (to_regclass($1), to_regclass($2), to_regclass($3))
  AND t.tgname ~ '^gateway_(session|user|flush|apikey|apikeyflush)_notify_v[0-9]+$'"""


def status_args(m: Mapping) -> tuple[str, str, str | None]:
    """``STATUS_SQL``'s parameters for a mapping."""
    return m.session.name, m.user.name, None if m.api_key is None else m.api_key.name


class Installed(NamedTuple):
    """One of the gateway's triggers, as found in the catalogue."""

    name: str
    function: str  # as ``regprocedure`` prints it: quoted, qualified where needed, with "()"
    on_session: bool

    @property
    def version(self) -> int:
        """The version in its name."""
        match = _NAME.fullmatch(self.name)
        return int(match.group(2)) if match else -1


class Status(NamedTuple):
    """What the catalogue shows of the triggers: whether this version's are all there, and any others."""

    current: bool
    older: tuple[Installed, ...]
    newer: tuple[Installed, ...]

    @property
    def older_versions(self) -> list[int]:
        """The older versions found, lowest first."""
        return sorted({t.version for t in self.older})


def status(rows: Iterable[tuple[str, str, bool]], *, api_keys: bool = False) -> Status:
    """Read ``STATUS_SQL``'s rows: current only if all triggers of ``VERSION`` are on their tables.

    ``api_keys``: the API key table's two are wanted too (``Mapping.api_key``).
    """
    found = [Installed(*row) for row in rows]
    session_fn, user_fn, flush_fn = names()
    wanted = {(session_fn, True), (user_fn, False), (flush_fn, True), (flush_fn, False)}
    if api_keys:
        wanted |= {(name, False) for name in api_key_names()}
    current = wanted <= {(t.name, t.on_session) for t in found}
    older = tuple(t for t in found if t.version < VERSION)
    return Status(current, older, tuple(t for t in found if t.version > VERSION))


# --- API keys (h-apikeys): the API key plugin's table, with GATEWAY_API_KEYS=on ---------------------
# Every verification through Better Auth writes its key's row (``remaining``, ``requestCount``,
# ``lastRequest``, ``lastRefillAt``, ``updatedAt``): those columns alone say nothing, unless the
# row written is spent (``remaining`` at 0, ``requestCount`` at ``rateLimitMax`` with the limit on,
# a new window included), after which Better Auth refuses it, writing nothing more, and so must
# every worker. Anything else (``enabled``, ``expiresAt``,
# the key, its owner, its limits…) and a DELETE (revocation, expiry, exhaustion) notify
# ``k:<sha256 hex of the key column>``; a TRUNCATE ``k:*``. Columns are read through ``to_jsonb``
# so a column an older plugin did not make is NULL, never an error in Better Auth's write.


def api_key_names(version: int = VERSION) -> tuple[str, str]:
    """The API key row trigger's name (also its function's) and its TRUNCATE trigger's."""
    return f"gateway_apikey_notify_v{version}", f"gateway_apikeyflush_notify_v{version}"


def api_key_sql(m: Mapping, channel_literal: str, version: int = VERSION) -> str:
    """The API key table's function and triggers (empty without one); ``channel_literal``: the quoted channel."""
    k = m.api_key
    if k is None:
        return ""
    row_name, truncate_name = api_key_names(version)
    fn = _qualified(m, row_name)
    usage = " - ".join(
        _literal(k.column(f)) for f in ("remaining", "requestCount", "lastRequest", "lastRefillAt", "updatedAt")
    )
    fields = ("remaining", "requestCount", "rateLimitMax", "rateLimitEnabled")
    remaining, count, most, limited = (_literal(k.column(f)) for f in fields)
    digest = f"encode(sha256(convert_to(OLD.{quote(k.column('key'))}::text, 'UTF8')), 'hex')"
    return f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
DECLARE
  n jsonb;
  o jsonb;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify({channel_literal}, 'k:*');
    RETURN NULL;
  END IF;
  o := to_jsonb(OLD);
  n := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(NEW) END;
  IF TG_OP = 'DELETE'
     OR (n - {usage}) IS DISTINCT FROM (o - {usage})
     OR (n ->> {remaining})::numeric <= 0
     OR ((n ->> {count})::numeric >= (n ->> {most})::numeric AND coalesce((n ->> {limited})::boolean, true)) THEN
    PERFORM pg_notify({channel_literal}, 'k:' || {digest});
  END IF;
  RETURN NULL;
END
$gateway$;
{_trigger(row_name, k.name, fn, "AFTER UPDATE OR DELETE", "ROW")}
{_trigger(truncate_name, k.name, fn, "AFTER TRUNCATE", "STATEMENT")}
"""


def _table_of(m: Mapping, trigger: Installed) -> str | None:
    """The API key table, for one of its triggers (``None`` for the others)."""
    return m.api_key.name if m.api_key is not None and "_apikey" in trigger.name else None
