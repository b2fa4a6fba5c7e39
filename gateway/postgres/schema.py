"""Where Better Auth's tables and fields live: presets plus per-name overrides, and the SQL.

Better Auth names fields in camelCase (``expiresAt``); how they land in Postgres depends on the
adapter (``docs/better-auth.md`` §1.4):

- ``default`` (Kysely, ``npx auth migrate``) and ``prisma``: columns keep the field names, quoted;
- ``drizzle``: snake_case columns (``expires_at``);
- ``use_plural``: ``users`` and ``sessions``;
- ``*_fields`` / ``*_table`` settings: any custom name (``modelName``, ``fields``).

Every identifier is validated by ``config`` and always double-quoted here, so ``"user"`` (a
reserved word) and camelCase columns work, and nothing from configuration is spliced raw.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from gateway.core.fields import DECISION_USER_FIELDS

if TYPE_CHECKING:
    from gateway.config import Settings

# The fields the gateway needs; of the rest, only those Better Auth returns are read
# (gateway.core.fields), and the few it decides with (DECISION_USER_FIELDS).
SESSION_REQUIRED = ("id", "userId", "expiresAt")
USER_REQUIRED = ("id",)


def quote(identifier: str) -> str:
    """Double-quote a SQL identifier (already validated: no quote can occur in it)."""
    return '"' + identifier.replace('"', '""') + '"'


def snake(field: str) -> str:
    """``expiresAt`` -> ``expires_at``, as Better Auth's Drizzle generator names columns."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", field).lower()


def camel(column: str) -> str:
    """``expires_at`` -> ``expiresAt``: the inverse of ``snake`` for generated names."""
    head, *rest = column.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Table(NamedTuple):
    """One mapped table: its qualified name and how its columns map to Better Auth fields."""

    name: str  # the qualified, quoted name used in SQL
    bare: str  # the unquoted table name, for the catalogue
    overrides: dict[str, str]  # field -> column, from settings
    snake_case: bool
    returned: frozenset[str] = frozenset()  # the fields Better Auth returns (gateway.core.fields)

    def column(self, field: str) -> str:
        """The column holding ``field``."""
        if field in self.overrides:
            return self.overrides[field]
        return snake(field) if self.snake_case else field

    def field(self, column: str) -> str:
        """The Better Auth field a column holds (the name it has in get-session's JSON)."""
        for field, col in self.overrides.items():
            if col == column:
                return field
        return camel(column) if self.snake_case else column


class Mapping(NamedTuple):
    """Both tables, the lookup column, and the schema they live in."""

    db_schema: str  # "" means Postgres's current_schema()
    session: Table
    user: Table
    token_field: str  # "token", or "id" for the legacy schema
    api_key: Table | None = None  # the API key plugin's table, with GATEWAY_API_KEYS=on (postgres.api_keys)
    member: Table | None = None  # the organization plugin's member table, where GATEWAY_ORGANIZATIONS=on


def mapping_from(settings: Settings) -> Mapping:
    """Build the mapping the settings describe."""
    snake_case = settings.schema_preset == "drizzle"
    suffix = "s" if settings.use_plural else ""
    prefix = quote(settings.db_schema) + "." if settings.db_schema else ""

    returned = settings.returned_fields

    def table(override: str, default: str, fields: dict[str, str], names: frozenset[str]) -> Table:
        bare = override or default + suffix
        return Table(prefix + quote(bare), bare, fields, snake_case, names)

    return Mapping(
        settings.db_schema,
        table(settings.session_table, "session", settings.session_fields, returned.session),
        table(settings.user_table, "user", settings.user_fields, returned.user),
        settings.token_field,
        api_key_table(settings) if settings.api_keys == "on" else None,
        # organizations: the member table (gateway.postgres.organizations), only where it is read
        table(settings.member_table, "member", settings.member_fields, frozenset())
        if settings.organizations == "on"
        else None,
    )


def api_key_table(settings: Settings) -> Table:
    """The API key plugin's ``apikey`` table (``apikeys`` with ``use_plural``), mapped as the others are."""
    prefix = quote(settings.db_schema) + "." if settings.db_schema else ""
    bare = settings.api_key_table or ("apikeys" if settings.use_plural else "apikey")
    return Table(prefix + quote(bare), bare, settings.api_key_fields, settings.schema_preset == "drizzle")


class Extra(NamedTuple):
    """Values another table adds to the lookup's row (``organizations``), read after all the others."""

    names: tuple[str, ...]  # their keys in ``Query.positions``
    select: tuple[str, ...]  # one expression each, over ``s`` (the session) and the join's alias
    join: str  # the join that brings them (a LEFT JOIN: never a row fewer, never one more)


class Query(NamedTuple):
    """The lookup statement and how to read its rows back."""

    sql: str  # one parameter: the token
    batch_sql: str  # one parameter: an array of tokens; the first column is the token
    session_fields: tuple[str, ...]  # field names of the session columns, in select order
    user_fields: tuple[str, ...]  # the same for the user columns returned, which follow
    # Where expiresAt and the decision fields (role, banned, banExpires) are among the selected
    # columns; a decision field Better Auth does not return is selected after the user's.
    positions: dict[str, int]
    unreturned: tuple[str, ...] = ()  # "user.role", ...: fields in the tables no answer holds
    select: str = ""  # the select list alone (``s.`` the session, ``u.`` the user): for the sliding refresh
    extra_join: str = ""  # the join ``select`` also reads (organizations' member): the sliding refresh adds it too


def build_query(m: Mapping, session_columns: list[str], user_columns: list[str], extra: Extra | None = None) -> Query:
    """Build the join of a session (by its token column) to its user.

    Args:
        m: the mapping.
        session_columns: the session table's columns, as found in the catalogue.
        user_columns: the same for the user table.
        extra: values another table adds, selected last (``organizations.joined``).

    Raises:
        LookupError: a required column is missing, named with the setting that maps it.
    """
    s, u = m.session, m.user
    _require(s, session_columns, (*SESSION_REQUIRED, m.token_field), "GATEWAY_SESSION_FIELDS")
    _require(u, user_columns, USER_REQUIRED, "GATEWAY_USER_FIELDS")
    token_col = s.column(m.token_field)
    # Only what Better Auth returns is read (a column's mere existence adds nothing); the token
    # never enters a cached value. The decision fields are read even when not returned.
    s_cols = [c for c in session_columns if c != token_col and s.field(c) in s.returned | set(SESSION_REQUIRED)]
    u_cols = [c for c in user_columns if u.field(c) in u.returned | set(USER_REQUIRED)]
    decide = [c for c in user_columns if u.field(c) in DECISION_USER_FIELDS and c not in u_cols]
    added = list(extra.select) if extra else []  # organizations: the active organization, the member's role
    select = ", ".join([f"s.{quote(c)}" for c in s_cols] + [f"u.{quote(c)}" for c in u_cols + decide] + added)
    join = f"FROM {s.name} AS s JOIN {u.name} AS u ON u.{quote(u.column('id'))} = s.{quote(s.column('userId'))}"
    join += f" {extra.join}" if extra else ""
    session_fields = tuple(s.field(c) for c in s_cols)
    user_read = [u.field(c) for c in u_cols + decide]
    positions = {"expiresAt": session_fields.index("expiresAt")}
    positions |= {f: len(s_cols) + user_read.index(f) for f in DECISION_USER_FIELDS if f in user_read}
    positions |= {name: len(s_cols) + len(user_read) + i for i, name in enumerate(extra.names if extra else ())}
    return Query(
        sql=f"SELECT {select} {join} WHERE s.{quote(token_col)} = $1",
        batch_sql=f"SELECT s.{quote(token_col)}, {select} {join} WHERE s.{quote(token_col)} = ANY($1::text[])",
        session_fields=session_fields,
        user_fields=tuple(u.field(c) for c in u_cols),
        positions=positions,
        select=select,
        extra_join=extra.join if extra else "",
        unreturned=tuple(
            [f"session.{s.field(c)}" for c in session_columns if c not in s_cols and c != token_col]
            + [f"user.{u.field(c)}" for c in user_columns if c not in u_cols]
        ),
    )


def _require(table: Table, columns: list[str], fields: tuple[str, ...], setting: str) -> None:
    if not columns:
        msg = f"table {table.name} not found (set GATEWAY_DB_SCHEMA, GATEWAY_*_TABLE or GATEWAY_USE_PLURAL)"
        raise LookupError(msg)
    missing = [f"{f} (column {table.column(f)!r})" for f in fields if table.column(f) not in columns]
    if missing:
        msg = f"table {table.name} has no column for {', '.join(missing)}: map it with {setting}"
        raise LookupError(msg)


COLUMNS_SQL = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = coalesce(nullif($1, ''), current_schema()) AND table_name = $2
ORDER BY ordinal_position
"""
