"""examples/grafana-dashboard.json: valid JSON whose every PromQL metric name a real gateway exports."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.postgres import seed
from tests.support import ROOT
from tests.support.credentials import cookie
from tests.support.waiting import eventually

if TYPE_CHECKING:
    import asyncpg

    from tests.support.server import Server

DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"})


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are no function, keyword, label or duration."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {name for name in names if name not in _KEYWORDS}


def test_metric_names_are_read_from_promql() -> None:
    """Functions, keywords, label lists, matchers and durations are not metric names."""
    expr = (
        'histogram_quantile(0.99, sum by (le, tier) (rate(gateway_decision_seconds_bucket{tier="l1"}[5m]))) '
        "/ on (instance) group_left() max by (instance, job) (gateway_build_info)"
    )
    assert metric_names(expr) == {"gateway_decision_seconds_bucket", "gateway_build_info"}


def queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {name for panel in dashboard["panels"] for t in panel["targets"] for name in metric_names(t["expr"])}


async def test_every_metric_the_dashboard_queries_is_exported(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """A real gateway of 2 workers (multiprocess mode) exports every series the dashboard charts, new ones included."""
    names = queried()
    assert {"gateway_decision_seconds_bucket", "gateway_requests_in_flight", "gateway_build_info"} <= names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_max_fds"} <= names
    token = await seed.create_session(db, await seed.create_user(db, email="dash@example.com"))
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_METRICS_FLUSH_S": "0.1"}, workers=2)
    async with httpx.AsyncClient(timeout=5) as c:
        await c.get(gw.url + "/validate", headers=cookie(token))  # labelled series appear once used

    async def exported() -> set[str] | None:
        async with httpx.AsyncClient(timeout=5) as c:
            text = (await c.get(gw.url + "/metrics")).text
        found = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        return found if names <= found else None

    await eventually(exported, within=10)
