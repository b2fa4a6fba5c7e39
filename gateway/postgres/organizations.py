"""The organization plugin's member table: the member's role joined into the session lookup, and its trigger.

With ``GATEWAY_ORGANIZATIONS=on`` the session lookup reads the session's
``activeOrganizationId`` and, in the same statement, the role of the session's user in that
organization (Better Auth's ``member`` row for ``organizationId`` + ``userId``, what its
``getActiveMember`` reads): one ``LEFT JOIN LATERAL`` with ``LIMIT 1``, so a session with no
active organization, or whose user is no member of it (any more), still has its one row, and
duplicate member rows (Better Auth enforces no unique key on the pair) never make two. Off, the
lookup is the plain session-user join: no extra cost.

The member table is mapped like the others (``docs/better-auth.md`` §1.4): ``member``, ``members``
with ``use_plural``, snake_case columns with the ``drizzle`` preset, ``GATEWAY_MEMBER_TABLE`` and
``GATEWAY_MEMBER_FIELDS`` for custom names; every identifier quoted.

What changes a cached role, and what tells the gateway (``triggers``):

- a role change, a member removed or added, an organization deleted (Better Auth deletes its
  members first): a row trigger on ``member`` notifies ``u:<userId>``, and every cached session
  of that user goes, in every worker;
- ``set-active`` (and ``create``, which sets the new organization active) updates the session
  row's ``activeOrganizationId``: the session trigger already notifies that (any column but
  ``expiresAt`` and ``updatedAt``);
- a ``TRUNCATE`` of the member table: a statement trigger run *before* it notifies ``u:`` for
  each user the table held, so no forged ``*`` is needed to prove it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.postgres.schema import Extra, quote

if TYPE_CHECKING:
    from gateway.postgres.schema import Mapping, Table

ACTIVE_FIELD = "activeOrganizationId"  # the session's field (organization plugin, schema.session)
MEMBER_REQUIRED = ("organizationId", "userId", "role")
# Where the two values sit in Query.positions (after every other selected column).
ORG_ID, ORG_ROLE = "org.id", "org.role"


def joined(m: Mapping, session_columns: list[str], member_columns: list[str]) -> Extra:
    """The active organization and the member's role, as columns the session lookup adds (``schema.build_query``).

    Raises:
        LookupError: a column the join needs is missing (the message names the setting that maps it).
    """
    assert m.member is not None  # noqa: S101  (only called where the feature is on)
    problem = missing(m.session, session_columns, m.member, member_columns)
    if problem is not None:
        raise LookupError(problem)
    select, join = select_and_join(m.session, m.member)
    return Extra((ORG_ID, ORG_ROLE), tuple(select), join)


def missing(session: Table, session_columns: list[str], member: Table, member_columns: list[str]) -> str | None:
    """What the two tables lack for the join, as a message naming the setting that maps it; else ``None``."""
    if session.column(ACTIVE_FIELD) not in session_columns:
        column = session.column(ACTIVE_FIELD)
        return (
            f"table {session.name} has no column {column!r} for {ACTIVE_FIELD} (GATEWAY_ORGANIZATIONS=on needs "
            "the organization plugin's migration; map it with GATEWAY_SESSION_FIELDS)"
        )
    if not member_columns:
        return f"table {member.name} not found (GATEWAY_ORGANIZATIONS=on: set GATEWAY_MEMBER_TABLE)"
    lacking = [f"{f} (column {member.column(f)!r})" for f in MEMBER_REQUIRED if member.column(f) not in member_columns]
    if lacking:
        return f"table {member.name} has no column for {', '.join(lacking)}: map it with GATEWAY_MEMBER_FIELDS"
    return None


def select_and_join(session: Table, member: Table) -> tuple[list[str], str]:
    """The two selected expressions (active organization, role) and the join that reads the role.

    The session is ``s`` and its user's id ``s.userId`` (the member's ``userId`` references the
    user, so the session's own column says whose membership counts).
    """
    active = f"s.{quote(session.column(ACTIVE_FIELD))}"
    org, user, role = (quote(member.column(f)) for f in MEMBER_REQUIRED)
    join = (
        f"LEFT JOIN LATERAL (SELECT gm.{role} FROM {member.name} AS gm "  # noqa: S608  (identifiers quoted)
        f"WHERE gm.{org} = {active} AND gm.{user} = s.{quote(session.column('userId'))} LIMIT 1) AS gw_member ON true"
    )
    return [f"{active}::text", f"gw_member.{role}::text"], join


def trigger_sql(member: Table, function: str, flush_function: str, notify: str) -> str:
    """The functions and triggers on the member table (``function``, ``flush_function``: qualified names).

    ``notify``: how the triggers' functions call ``pg_notify`` with the channel, up to the payload
    (``pg_notify('channel', ``).
    """
    user = quote(member.column("userId"))
    return f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM {notify}'u:' || NEW.{user}::text);
  ELSE
    PERFORM {notify}'u:' || OLD.{user}::text);
    IF TG_OP = 'UPDATE' AND NEW.{user} IS DISTINCT FROM OLD.{user} THEN
      PERFORM {notify}'u:' || NEW.{user}::text);
    END IF;
  END IF;
  RETURN NULL;
END
$gateway$;
CREATE OR REPLACE FUNCTION {flush_function}() RETURNS trigger LANGUAGE plpgsql AS $gateway$
BEGIN
  PERFORM {notify}'u:' || held.id) FROM (SELECT DISTINCT {user}::text AS id FROM {member.name}) AS held;
  RETURN NULL;
END
$gateway$;
"""  # noqa: S608  (identifiers quoted, literals escaped by the caller)
