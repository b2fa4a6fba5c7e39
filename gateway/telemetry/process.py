"""``gateway_build_info`` and the standard ``process_*`` series, right with any number of workers.

prometheus-client's ``ProcessCollector`` reads ``/proc/self`` when scraped: in multiprocess mode
that would be the one process that answers the scrape, and its collectors are not added up
(prometheus-client: "custom collectors do not work"). So there each worker samples its own
``/proc`` at every metrics flush into series that multiprocess mode does add up, each the way
it makes sense for a set of workers:

- ``process_cpu_seconds_total``: a counter, each worker adding its CPU time since the last
  sample: the total of every worker, past ones included (``rate()`` works across restarts);
- ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``, ``process_open_fds``: the
  sum over the live workers;
- ``process_max_fds``: the smallest limit of a live worker; ``process_start_time_seconds``: the
  earliest start of a live worker.

With one process (no ``PROMETHEUS_MULTIPROC_DIR``), the ``ProcessCollector`` itself is registered.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, ProcessCollector

from gateway import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

# name -> (help, multiprocess mode)
_GAUGES = {
    "process_resident_memory_bytes": ("Resident memory size in bytes, all live workers.", "livesum"),
    "process_virtual_memory_bytes": ("Virtual memory size in bytes, all live workers.", "livesum"),
    "process_open_fds": ("Open file descriptors, all live workers.", "livesum"),
    "process_max_fds": ("Maximum number of open file descriptors (the lowest of a live worker).", "livemin"),
    "process_start_time_seconds": ("Start time of the earliest live worker since the epoch, in seconds.", "livemin"),
}


def build_info(registry: CollectorRegistry) -> None:
    """``gateway_build_info{version, python, granian} 1``: which build answers."""
    try:
        granian = version("granian")
    except PackageNotFoundError:  # pragma: no cover  (a dependency)
        granian = ""
    gauge = Gauge(
        "gateway_build_info",
        "The gateway's version, Python's and granian's (always 1).",
        ["version", "python", "granian"],
        registry=registry,
        multiprocess_mode="max",
    )
    gauge.labels(__version__, platform.python_version(), granian).set(1)


class ProcessSampler:
    """Copies this worker's ``/proc`` figures into series multiprocess mode adds up (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        self._collector: Collector = ProcessCollector(registry=None if multiprocess else registry)
        self._multiprocess = multiprocess
        self._gauges = {
            name: Gauge(name, text, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
            for name, (text, mode) in _GAUGES.items()
            if multiprocess
        }
        self._cpu = (
            Counter("process_cpu_seconds", "Total user and system CPU time in seconds, all workers.", registry=registry)
            if multiprocess
            else None
        )
        self._cpu_seen = 0.0

    def sample(self) -> None:
        """Read ``/proc`` once and publish it (multiprocess mode only: else the collector answers scrapes)."""
        if not self._multiprocess:
            return
        for family in self._collector.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total" and self._cpu is not None:
                    self._cpu.inc(max(0.0, sample.value - self._cpu_seen))
                    self._cpu_seen = sample.value
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)
