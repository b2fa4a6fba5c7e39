"""The decision-latency histogram: per-worker counts flushed give exactly what observe() would have."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.latency import BUCKETS, DecisionSeconds
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.requests import CURRENT, Request

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

VALUES = [0.0, 0.000003, 0.00001, 0.0000100001, 0.0004, 0.001, 0.0123, 0.5, 5.0, 7.5, 120.0, *BUCKETS]


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("t_seconds", "t", ["endpoint", "tier"], buckets=BUCKETS, registry=registry)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_flush_writes_what_observe_would_have_and_only_once() -> None:
    """Bucket by bucket (values on a bound included), count and sum; a second flush adds nothing."""
    direct, counted = CollectorRegistry(), CollectorRegistry()
    reference, seconds = histogram(direct), DecisionSeconds(histogram(counted))
    hot = seconds.child("validate", "l1").observe
    for value in VALUES:
        reference.labels("validate", "l1").observe(value)
        hot(value)
        reference.labels("get_session", "postgres").observe(value / 3)
        seconds.observe("get_session", "postgres", value / 3)
    assert samples(counted) == {}  # nothing before the flush
    seconds.flush()
    seconds.flush()
    assert samples(counted).keys() == samples(direct).keys()
    for key, value in samples(direct).items():
        assert abs(samples(counted)[key] - value) < 1e-9, key


def test_labels_stay_in_their_fixed_sets() -> None:
    """An unknown endpoint counts as validate and an unknown tier as none: never a label a client chose."""
    registry = CollectorRegistry()
    seconds = DecisionSeconds(histogram(registry))
    seconds.observe("/admin/../x", "evil", 0.001)
    seconds.flush()
    labels = {dict(k[1]).get("endpoint", "") + "/" + dict(k[1]).get("tier", "") for k in samples(registry)}
    assert labels == {"validate/none"}


def test_a_lookup_names_the_tier_of_the_request_being_decided() -> None:
    """Metrics.lookup marks the current request's tier (the last consulted); a join marks it joined."""
    metrics = Metrics()
    request = Request(None, None)
    token = CURRENT.set(request)
    try:
        metrics.lookup("l1", "miss")
        metrics.lookup("redis", "miss")
        metrics.lookup("postgres", "hit")
        assert request.tier == "postgres"
        metrics.event("singleflight_join")
        assert request.tier == "joined"
    finally:
        CURRENT.reset(token)
    metrics.lookup("redis", "hit")  # no request: nothing to mark, nothing fails
    assert request.tier == "joined"


_WORKER = """
import sys
from gateway.telemetry.metrics import Metrics
metrics = Metrics()
for _ in range(int(sys.argv[1])):
    metrics.decision_seconds.observe("validate", "l1", 0.000004)
metrics.decision_seconds.observe("validate", "postgres", 0.003)
metrics.in_flight = int(sys.argv[1])
metrics.flush()
"""


def test_multiprocess_mode_sums_the_histogram_and_the_in_flight_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' histograms and in-flight counts add up in any process's exposition."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for count in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(count)], env=env, check=True, timeout=60)  # noqa: S603
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(Metrics().exposition().decode())
        for s in family.samples
    }
    l1 = (("endpoint", "validate"), ("tier", "l1"))
    assert found["gateway_decision_seconds_count", l1] == 7
    assert found["gateway_decision_seconds_bucket", (*l1[:1], ("le", "1e-05"), *l1[1:])] == 7
    assert found["gateway_decision_seconds_count", (("endpoint", "validate"), ("tier", "postgres"))] == 2
    assert found["gateway_requests_in_flight", ()] == 7
