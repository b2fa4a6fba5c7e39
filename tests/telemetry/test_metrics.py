"""Metrics: cheap counts on the hot path, added to the Prometheus series at each flush; summed over workers."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from gateway.core.sessions import Reason
from gateway.telemetry.metrics import Metrics, multiprocess_mode

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_counts_reach_the_series_only_at_a_flush_and_once() -> None:
    """Decisions, lookups and events are plain counts until a flush adds them to the series, once."""
    metrics = Metrics()
    metrics.decision(Reason.ok)
    metrics.decision(Reason.ok)
    metrics.lookup("redis", "hit")
    metrics.event("eviction")
    assert value(metrics, "gateway_decisions_total", outcome="allow", reason="ok") is None
    metrics.flush()
    metrics.flush()
    assert value(metrics, "gateway_decisions_total", outcome="allow", reason="ok") == 2
    assert value(metrics, "gateway_cache_lookups_total", tier="redis", result="hit") == 1
    assert value(metrics, "gateway_events_total", event="eviction") == 1


def test_reasons_map_to_outcomes() -> None:
    """ok and anonymous allow, backend_unavailable is an error, forbidden is its own; every other reason denies."""
    metrics = Metrics()
    for reason in ("ok", "anonymous", "backend_unavailable", "forbidden", Reason.expired, Reason.rate_limited):
        metrics.decision(reason)
    metrics.flush()
    expected = {
        ("allow", "ok"),
        ("allow", "anonymous"),
        ("error", "backend_unavailable"),
        ("forbidden", "forbidden"),
        ("deny", "expired"),
        ("deny", "rate_limited"),
    }
    for outcome, reason in expected:
        assert value(metrics, "gateway_decisions_total", outcome=outcome, reason=reason) == 1, (outcome, reason)


def test_fast_hits_count_as_allowed_decisions_and_l1_hits() -> None:
    """The forward-auth hit path's plain integer becomes allowed decisions and L1 hits at the flush, then restarts."""
    metrics = Metrics()
    metrics.fast_hits += 5
    metrics.lookup("l1", "hit")
    metrics.flush()
    assert metrics.fast_hits == 0
    assert value(metrics, "gateway_decisions_total", outcome="allow", reason="ok") == 5
    assert value(metrics, "gateway_cache_lookups_total", tier="l1", result="hit") == 6


def test_samplers_set_the_gauges_at_each_flush() -> None:
    """Gauges are sampled at the flush, to the latest value."""
    metrics = Metrics()
    pool = {"pool_connections": 3.0, "redis_degraded": 1.0}
    metrics.samplers.append(lambda: pool)
    metrics.flush()
    pool["pool_connections"] = 2.0
    metrics.flush()
    assert value(metrics, "gateway_pool_connections") == 2
    assert value(metrics, "gateway_redis_degraded") == 1


def test_the_exposition_holds_the_series_and_never_a_credential() -> None:
    """One worker's exposition is Prometheus text with the gateway's series; labels are bounded names."""
    metrics = Metrics()
    metrics.decision(Reason.bad_signature)
    metrics.backend_seconds.labels("postgres").observe(0.002)
    metrics.flush()
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"gateway_decisions", "gateway_cache_lookups", "gateway_events", "gateway_backend_seconds"} <= set(families)
    (sample,) = families["gateway_decisions"].samples[:1]
    assert sample.labels == {"outcome": "deny", "reason": "bad_signature"}


_WORKER = """
import sys
from gateway.telemetry.metrics import Metrics
metrics = Metrics()
for _ in range(int(sys.argv[1])):
    metrics.decision("ok")
metrics.fast_hits += 1
metrics.flush()
"""


def test_multiprocess_mode_sums_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worker processes count into PROMETHEUS_MULTIPROC_DIR; any process's exposition gives the sums."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for count in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(count)], env=env, check=True, timeout=60)  # noqa: S603
    assert not multiprocess_mode()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert multiprocess_mode()
    families = {f.name: f for f in text_string_to_metric_families(Metrics().exposition().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["gateway_decisions"].samples}
    assert samples[("gateway_decisions_total", (("outcome", "allow"), ("reason", "ok")))] == 3 + 1 + 4 + 1
    lookups = {tuple(sorted(s.labels.items())): s.value for s in families["gateway_cache_lookups"].samples}
    assert lookups[(("result", "hit"), ("tier", "l1"))] == 2
