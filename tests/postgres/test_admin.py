"""The command line's database chores: core errors out, the connection budget stated."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.core.errors import StoreUnavailable
from gateway.postgres.admin import connection_budget, max_connections, run_sql
from tests.support.ports import free_port


async def test_unreachable_postgres_is_the_cores_error_with_its_cause() -> None:
    """No asyncpg or OSError leaves the adapter: ``StoreUnavailable``, the driver's failure chained."""
    settings = load_settings(
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x", "GATEWAY_DB_TIMEOUT_S": "1"},
        need=frozenset({"database"}),
    )
    with pytest.raises(StoreUnavailable) as caught:
        await run_sql(settings, "select 1")
    assert isinstance(caught.value.__cause__, OSError)
    assert await max_connections(settings) is None


async def test_a_failing_script_is_the_cores_error(database: str) -> None:
    """Postgres answering with an error is ``StoreUnavailable`` too (the command line prints it)."""
    settings = load_settings({"DATABASE_URL": database}, need=frozenset({"database"}))
    with pytest.raises(StoreUnavailable, match="syntax"):
        await run_sql(settings, "selec 1")
    assert (await max_connections(settings) or 0) > 0


def test_budget_counts_every_role_per_worker_per_instance() -> None:
    """instances x workers x (pool [+ primary pool with a replica] + listener)."""
    base = {"DATABASE_URL": "postgresql://p/db", "GATEWAY_WORKERS": "2", "GATEWAY_POOL_MAX_SIZE": "5"}
    plain = load_settings(base, need=frozenset({"database"}))
    assert connection_budget(plain, 3).total == 3 * 2 * (5 + 1)
    replica = load_settings(base | {"GATEWAY_READ_DATABASE_URL": "postgresql://r/db"}, need=frozenset({"database"}))
    budget = connection_budget(replica, 3)
    assert budget.total == 3 * 2 * (5 + 2 + 1)
    assert "replica misses on the primary" in budget.how
    quiet = load_settings(base | {"GATEWAY_LISTEN": "false"}, need=frozenset({"database"}))
    assert connection_budget(quiet).total == 2 * 5
