"""The JWT plugin's public keys, read from its table (``jwks``) as its ``/jwks`` endpoint lists them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.postgres.schema import quote

if TYPE_CHECKING:
    import asyncpg


def keys_sql(db_schema: str | None, table: str) -> str:
    """The query for every row of the keys table, its private key column left out."""
    name = (quote(db_schema) + "." if db_schema else "") + quote(table)
    # to_jsonb: whichever of the optional columns (alg, crv) this version's table has.
    return f"SELECT to_jsonb(k) - 'privateKey' AS row FROM {name} AS k"  # noqa: S608  (validated, quoted identifiers)


async def read_keys(conn: asyncpg.Connection, sql: str) -> list[dict[str, Any]]:
    """Each stored public JWK with ``kid`` (the row's id) and, where the row has them, ``alg`` and ``crv``.

    The private key column is never read.
    """
    keys = []
    for record in await conn.fetch(sql):
        row = record["row"]  # jsonb: decoded by the pool's codec
        extra = {k: row[k] for k in ("alg", "crv") if row.get(k)}
        keys.append(extra | json.loads(row["publicKey"]) | {"kid": row["id"]})
    return keys
