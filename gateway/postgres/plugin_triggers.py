"""The plugins' blocks of the invalidation triggers (``triggers``): API keys, and organizations' member table.

Each is installed only where its feature is on, in the same transaction as the core's triggers,
under the same version; the SQL text helpers they share with ``triggers`` live here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.postgres import organizations
from gateway.postgres.schema import quote

if TYPE_CHECKING:
    from gateway.postgres.schema import Mapping


def qualified(m: Mapping, name: str) -> str:
    """A function name in the mapping's schema, quoted."""
    return (quote(m.db_schema) + "." if m.db_schema else "") + quote(name)


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def create_trigger(name: str, table: str, function: str, when: str, each: str) -> str:
    """(Re)create one trigger."""
    return (
        f"DROP TRIGGER IF EXISTS {quote(name)} ON {table};\n"
        f"CREATE TRIGGER {quote(name)} {when} ON {table} FOR EACH {each} EXECUTE FUNCTION {function}();"
    )


# --- organizations (issue 19): the member table's triggers, where GATEWAY_ORGANIZATIONS=on ---
def member_names(version: int) -> tuple[str, str]:
    """The member table's function (and trigger) names of a version: row changes, and TRUNCATE."""
    return f"gateway_member_notify_v{version}", f"gateway_member_flush_notify_v{version}"


def member_sql(m: Mapping, channel: str, version: int) -> str:
    """The member table's functions and triggers (nothing where the feature is off)."""
    if m.member is None:
        return ""
    fn, flush = member_names(version)
    fn_m, fn_mf = qualified(m, fn), qualified(m, flush)
    return (
        organizations.trigger_sql(m.member, fn_m, fn_mf, f"pg_notify({literal(channel)}, ")
        + create_trigger(fn, m.member.name, fn_m, "AFTER INSERT OR UPDATE OR DELETE", "ROW")
        + "\n"
        # BEFORE TRUNCATE: the rows are still there to name their users
        + create_trigger(flush, m.member.name, fn_mf, "BEFORE TRUNCATE", "STATEMENT")
        + "\n"
    )


# --- end of organizations ---


# --- API keys (h-apikeys): the API key plugin's table, with GATEWAY_API_KEYS=on ---------------------
# Every verification through Better Auth writes its key's row (``remaining``, ``requestCount``,
# ``lastRequest``, ``lastRefillAt``, ``updatedAt``): those columns alone say nothing, unless the
# row written is spent (``remaining`` at 0, ``requestCount`` at ``rateLimitMax`` with the limit on,
# a new window included), after which Better Auth refuses it, writing nothing more, and so must
# every worker. Anything else (``enabled``, ``expiresAt``,
# the key, its owner, its limits…) and a DELETE (revocation, expiry, exhaustion) notify
# ``k:<sha256 hex of the key column>``; a TRUNCATE ``k:*``. Columns are read through ``to_jsonb``
# so a column an older plugin did not make is NULL, never an error in Better Auth's write.


def api_key_names(version: int) -> tuple[str, str]:
    """The API key row trigger's name (also its function's) and its TRUNCATE trigger's."""
    return f"gateway_apikey_notify_v{version}", f"gateway_apikeyflush_notify_v{version}"


def api_key_sql(m: Mapping, channel_literal: str, version: int) -> str:
    """The API key table's function and triggers (empty without one); ``channel_literal``: the quoted channel."""
    k = m.api_key
    if k is None:
        return ""
    row_name, truncate_name = api_key_names(version)
    fn = qualified(m, row_name)
    usage = " - ".join(
        literal(k.column(f)) for f in ("remaining", "requestCount", "lastRequest", "lastRefillAt", "updatedAt")
    )
    fields = ("remaining", "requestCount", "rateLimitMax", "rateLimitEnabled")
    remaining, count, most, limited = (literal(k.column(f)) for f in fields)
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
{create_trigger(row_name, k.name, fn, "AFTER UPDATE OR DELETE", "ROW")}
{create_trigger(truncate_name, k.name, fn, "AFTER TRUNCATE", "STATEMENT")}
"""
