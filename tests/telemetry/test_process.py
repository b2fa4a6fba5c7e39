"""build_info and the process_* series: the collector with one process, summed series with several."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def exposition(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_one_process_exports_build_info_and_its_process_series() -> None:
    """build_info names the gateway's, Python's and granian's versions; the process collector answers."""
    found = exposition(Metrics())
    ((labels, value),) = found["gateway_build_info"].items()
    assert value == 1
    assert dict(labels)["version"] == __version__
    assert dict(labels)["python"] == platform.python_version()
    assert dict(labels)["granian"]
    if sys.platform == "linux":
        assert found["process_resident_memory_bytes"][()] > 0
        assert "process_cpu_seconds_total" in found


_WORKER = """
from gateway.telemetry.metrics import Metrics
metrics = Metrics()
sum(i * i for i in range(300_000))  # some CPU time to count
metrics.flush()
"""


def test_multiprocess_mode_adds_up_the_workers_process_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker's /proc figures reach series that add up: memory and CPU summed, one build_info."""
    if sys.platform != "linux":
        return
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER], env=env, check=True, timeout=60)  # noqa: S603
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = exposition(Metrics())
    assert len(found["gateway_build_info"]) == 1
    assert found["process_cpu_seconds_total"][()] > 0
    # livesum: the two workers' resident memory (each some MiB), as files of two pids
    assert found["process_resident_memory_bytes"][()] > 2 * 5_000_000
    assert found["process_max_fds"][()] > 0
    assert found["process_start_time_seconds"][()] > 1_600_000_000
