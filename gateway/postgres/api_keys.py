"""The API key plugin's ``apikey`` table: one prepared join of a key (by its hashed ``key`` column) to its user.

Mapped as Better Auth's other tables are (``schema``): ``apikey`` (``apikeys`` with
``GATEWAY_USE_PLURAL``), camelCase columns (``referenceId``, ``rateLimitMax``…) by default and
with Prisma, snake_case with Drizzle, any other name through ``GATEWAY_API_KEY_TABLE`` and
``GATEWAY_API_KEY_FIELDS``. The columns are those ``@better-auth/api-key`` 1.7 migrates; of them
``id``, ``key`` and ``referenceId`` are required, the others read when present (a column an older
plugin did not make reads as ``NULL``: its rule does not apply).

Keys are read on the primary (a key made a moment ago must count), never written.
"""

from __future__ import annotations

import asyncio
import decimal
import logging
import math
from typing import TYPE_CHECKING, Any

from gateway.core.errors import SchemaMismatch
from gateway.core.fields import DECISION_USER_FIELDS
from gateway.credentials.api_keys import ApiKeyRecord
from gateway.lookup.api_keys import ApiKeys
from gateway.postgres.rows import json_value, unix_seconds
from gateway.postgres.schema import COLUMNS_SQL, Table, api_key_table, mapping_from, quote

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg

    from gateway.config import Settings
    from gateway.postgres.schema import Mapping
    from gateway.postgres.store import Store
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.postgres.api_keys")
REQUIRED = ("id", "key", "referenceId")
# The row's fields the judging reads, in select order (ApiKeyRecord's), after ``id`` and ``referenceId``.
OPTIONAL = (
    "configId",
    "enabled",
    "expiresAt",
    "remaining",
    "refillAmount",
    "refillInterval",
    "lastRefillAt",
    "createdAt",
    "rateLimitEnabled",
    "rateLimitTimeWindow",
    "rateLimitMax",
    "requestCount",
    "lastRequest",
)


class KeyQuery:
    """The lookup of one key, built from the catalogue's columns, and how to read its row back."""

    def __init__(self, keys: Table, m: Mapping, key_columns: list[str], user_columns: list[str]) -> None:
        """Build it; ``LookupError`` names what is missing (a table, or a required column and its setting)."""
        u = m.user
        if not key_columns:
            msg = f"table {keys.name} not found (the API key plugin's: set GATEWAY_API_KEY_TABLE or GATEWAY_USE_PLURAL)"
            raise LookupError(msg)
        missing = [f"{f} (column {keys.column(f)!r})" for f in REQUIRED if keys.column(f) not in key_columns]
        if not user_columns or u.column("id") not in user_columns:
            missing.append(f"the user table {u.name}'s id")
        if missing:
            msg = f"table {keys.name} has no column for {', '.join(missing)}: map it with GATEWAY_API_KEY_FIELDS"
            raise LookupError(msg)
        k_select = [
            f"k.{quote(keys.column(f))}" if keys.column(f) in key_columns else "NULL"
            for f in ("id", "referenceId", *OPTIONAL)
        ]
        u_cols = [c for c in user_columns if u.field(c) in u.returned | {"id"}]
        decide = [c for c in user_columns if u.field(c) in DECISION_USER_FIELDS and c not in u_cols]
        self.user_fields = tuple(u.field(c) for c in u_cols)
        self.decision = {u.field(c): 2 + len(OPTIONAL) + len(u_cols) + i for i, c in enumerate(decide)}
        self.decision |= {
            u.field(c): 2 + len(OPTIONAL) + i for i, c in enumerate(u_cols) if u.field(c) in DECISION_USER_FIELDS
        }
        select = ", ".join(k_select + [f"u.{quote(c)}" for c in u_cols + decide])
        on = f"u.{quote(u.column('id'))} = k.{quote(keys.column('referenceId'))}"
        where = f"k.{quote(keys.column('key'))} = $1"
        self.sql = f"SELECT {select} FROM {keys.name} AS k JOIN {u.name} AS u ON {on} WHERE {where}"  # noqa: S608

    def record(self, row: Sequence[Any]) -> ApiKeyRecord:
        """A row as an ``ApiKeyRecord`` (``TypeError``/``ValueError`` if a value is not of its kind)."""
        start = 2 + len(OPTIONAL)
        (key_id, user_id, config_id, enabled, expires, remaining, refill_amount, refill_interval,
         last_refill, created, rl_enabled, rl_window, rl_max, count, last_request) = row[:start]  # fmt: skip
        values = [json_value(v) for v in row[start : start + len(self.user_fields)]]
        at = self.decision
        banned = row[at["banned"]] if "banned" in at else None
        ban_expires = row[at["banExpires"]] if "banExpires" in at else None
        role = row[at["role"]] if "role" in at else None
        return ApiKeyRecord(
            id=str(key_id),
            user_id=str(user_id),
            user=dict(zip(self.user_fields, values, strict=True)),
            banned_until=0.0 if banned is not True else math.inf if ban_expires is None else unix_seconds(ban_expires),
            role=role if isinstance(role, str) else None,
            config_id=None if config_id is None else str(config_id),
            enabled=None if enabled is None else bool(enabled),
            expires_at=None if expires is None else unix_seconds(expires),
            expires_at_iso=None if expires is None else json_value(expires),
            remaining=_int(remaining),
            refill_amount=_int(refill_amount),
            refill_interval_ms=_int(refill_interval),
            last_refill_at=None if last_refill is None else unix_seconds(last_refill),
            created_at=0.0 if created is None else unix_seconds(created),
            rate_limit_enabled=None if rl_enabled is None else bool(rl_enabled),
            rate_limit_window_ms=_int(rl_window),
            rate_limit_max=_int(rl_max),
            request_count=_int(count),
            last_request=None if last_request is None else unix_seconds(last_request),
        )


def _int(value: object) -> int | None:
    """A numeric column (``integer``, ``bigint``, ``numeric`` or ``double``) as an int; ``NULL`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal):
        msg = f"not a number: {type(value).__name__}"
        raise TypeError(msg)
    return int(value)


async def build_key_query(conn: asyncpg.Connection, keys: Table, m: Mapping, timeout_s: float) -> KeyQuery:
    """Read both tables' columns from the catalogue and build the lookup (``LookupError`` if not as mapped)."""
    key_columns = [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, keys.bare, timeout=timeout_s)]
    user_columns = [r[0] for r in await conn.fetch(COLUMNS_SQL, m.db_schema, m.user.bare, timeout=timeout_s)]
    return KeyQuery(keys, m, key_columns, user_columns)


class ApiKeyStore:
    """Looks keys up by their ``key`` column's value, on the primary; the catalogue read on first use."""

    def __init__(self, store: Store, settings: Settings, mapping: Mapping) -> None:
        self._store = store
        self._table = api_key_table(settings)
        self._mapping = mapping
        self._timeout_s = settings.db_timeout_s
        self._query: KeyQuery | None = None
        self._lock = asyncio.Lock()
        self.queries = 0  # lookups sent, for tests

    async def fetch(self, stored: str) -> ApiKeyRecord | None:
        """The key whose ``key`` column is ``stored``, joined to its user; ``None`` if none (or unreadable).

        Raises:
            StoreUnavailable: Postgres did not answer in time (``SchemaMismatch``: the table is not as mapped).
        """
        self.queries += 1

        async def lookup(conn: asyncpg.Connection) -> ApiKeyRecord | None:
            query = self._query or await self._load(conn)
            row = await conn.fetchrow(query.sql, stored, timeout=self._timeout_s)
            if row is None:
                return None
            try:
                return query.record(row)
            except (TypeError, ValueError, OverflowError) as exc:
                log.warning("an API key row could not be read, treated as no key: %s", type(exc).__name__)
                return None

        return await self._store.run_on_primary(lookup)

    async def _load(self, conn: asyncpg.Connection) -> KeyQuery:
        async with self._lock:
            if self._query is None:
                try:
                    self._query = await build_key_query(conn, self._table, self._mapping, self._timeout_s)
                except LookupError as exc:
                    raise SchemaMismatch(str(exc)) from exc
                log.info("API key lookup: %s", self._query.sql)
            return self._query


def open_api_keys(
    settings: Settings, store: Store | None, ttl_s: float, metrics: Metrics, clock: Callable[[], float]
) -> ApiKeys | None:
    """The API key plugin's keys, judged from its table: with ``GATEWAY_API_KEYS=on`` (and Postgres), else ``None``.

    ``ttl_s``: the session LRU's TTL, which the key cache shares.
    """
    if settings.api_keys != "on" or store is None:
        return None
    return ApiKeys(
        ApiKeyStore(store, settings, mapping_from(settings)),
        settings,
        max_entries=settings.l1_max_entries,
        ttl_s=ttl_s,
        negative_ttl_s=settings.negative_ttl_s,
        metrics=metrics,
        clock=clock,
    )
