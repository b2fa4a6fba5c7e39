"""The SQL that makes Postgres tell every gateway, within milliseconds, what to forget.

Triggers on Better Auth's session and user tables ``NOTIFY`` one channel with payloads that carry
nothing usable to whoever can ``LISTEN``:

- ``s:<sha256(token) hex>``: a session was deleted (sign-out, every revoke, ban, password change,
  user deletion), or updated in a way that matters: ``expiresAt`` moved *earlier* (preserve mode's
  revocation) or any other column changed (token, user, active organization…). A sliding refresh,
  which only moves ``expiresAt`` later and touches ``updatedAt``, says nothing;
- ``u:<user id>``: a user was deleted, or updated in any column but ``updatedAt`` (ban, e-mail,
  name, role…): every cached session of that user goes;
- ``*``: a table was truncated: forget everything.

The objects carry a version in their names (``_v1``) so a later version can be installed beside,
then this one removed. Installing is idempotent (one transaction; ``CREATE OR REPLACE`` and
``DROP … IF EXISTS``).

Permissions: installing needs ``CREATE`` on the schema and ownership of the two tables (or the
``TRIGGER`` privilege on them; ``pg_notify`` needs nothing). The gateway itself needs only
``CONNECT``, and ``SELECT`` on the two tables; ``LISTEN`` needs no privilege.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.postgres.schema import quote

if TYPE_CHECKING:
    from gateway.postgres.schema import Mapping

VERSION = 1
SESSION_FUNCTION = f"gateway_session_notify_v{VERSION}"
USER_FUNCTION = f"gateway_user_notify_v{VERSION}"
FLUSH_FUNCTION = f"gateway_flush_notify_v{VERSION}"
_MARK = f"better-auth-gateway invalidation triggers v{VERSION}"


def _qualified(m: Mapping, name: str) -> str:
    return (quote(m.db_schema) + "." if m.db_schema else "") + quote(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def install_sql(m: Mapping, channel: str) -> str:
    """The SQL that installs (or reinstalls) the functions and triggers, as one transaction."""
    s, u, ch = m.session, m.user, _literal(channel)
    token, expires = quote(s.column(m.token_field)), s.column("expiresAt")
    unchanged_s = f"- {_literal(expires)} - {_literal(s.column('updatedAt'))}"
    unchanged_u = f"- {_literal(u.column('updatedAt'))}"
    digest = f"encode(sha256(convert_to(OLD.{token}::text, 'UTF8')), 'hex')"
    fn_s, fn_u, fn_f = (_qualified(m, n) for n in (SESSION_FUNCTION, USER_FUNCTION, FLUSH_FUNCTION))
    return f"""BEGIN;
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
COMMENT ON FUNCTION {fn_s}() IS {_literal(_MARK)};
{_trigger(SESSION_FUNCTION, s.name, fn_s, "AFTER UPDATE OR DELETE", "ROW")}
{_trigger(USER_FUNCTION, u.name, fn_u, "AFTER UPDATE OR DELETE", "ROW")}
{_trigger(FLUSH_FUNCTION, s.name, fn_f, "AFTER TRUNCATE", "STATEMENT")}
{_trigger(FLUSH_FUNCTION, u.name, fn_f, "AFTER TRUNCATE", "STATEMENT")}
COMMIT;
"""


def _trigger(name: str, table: str, function: str, when: str, each: str) -> str:
    return (
        f"DROP TRIGGER IF EXISTS {quote(name)} ON {table};\n"
        f"CREATE TRIGGER {quote(name)} {when} ON {table} FOR EACH {each} EXECUTE FUNCTION {function}();"
    )


def uninstall_sql(m: Mapping) -> str:
    """The SQL that removes every trigger and function ``install_sql`` creates."""
    drops = [f"DROP TRIGGER IF EXISTS {quote(n)} ON {t};" for n, t in _triggers(m)]
    drops += [f"DROP FUNCTION IF EXISTS {_qualified(m, n)}();" for n in installed_names()]
    return "BEGIN;\n" + "\n".join(drops) + "\nCOMMIT;\n"


def _triggers(m: Mapping) -> list[tuple[str, str]]:
    return [
        (SESSION_FUNCTION, m.session.name),
        (USER_FUNCTION, m.user.name),
        (FLUSH_FUNCTION, m.session.name),
        (FLUSH_FUNCTION, m.user.name),
    ]


INSTALLED_SQL = "SELECT count(*) FROM pg_trigger WHERE tgname = ANY($1::text[]) AND NOT tgisinternal"


def installed_names() -> list[str]:
    """The trigger names to look for in ``pg_trigger`` (``INSTALLED_SQL``'s parameter)."""
    return [SESSION_FUNCTION, USER_FUNCTION, FLUSH_FUNCTION]
