"""Prometheus metrics, with bounded labels: never a path, a user or a token.

The multi-worker choice: **prometheus-client's multiprocess mode.** ``gateway serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before granian starts its workers; each worker
writes its numbers there and ``/metrics`` (from whichever worker answers, or the separate
``GATEWAY_METRICS_PORT`` served by the main process) adds them up. So the totals are right with
any number of workers.

The hot path doesn't touch prometheus-client (a locked mmap write per increment): it bumps plain
integers, which ``flush`` (every ``GATEWAY_METRICS_FLUSH_S``, and at shutdown) adds to the
Prometheus series. A scrape may lag by that interval. The decision-latency histogram is counted
the same way (``latency``), and so is the in-flight gauge: a plain integer, sampled at each flush
(a hit answered with no coroutine is never in flight when the loop runs a flush). How each
series adds up over the workers: counters and histograms sum every worker's numbers, past ones
included; the gauges sum the live workers (``livesum``); ``process``'s series are documented there.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from gateway.telemetry import latency
from gateway.telemetry.process import ProcessSampler, build_info
from gateway.telemetry.requests import CURRENT

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.core.sessions import Reason

# Sub-millisecond buckets: a Redis MGET takes ~0.1-1 ms here, a Postgres lookup ~0.5-5 ms.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What a decision's reason counts as.
_OUTCOMES = {"ok": "allow", "backend_unavailable": "error", "forbidden": "forbidden", "anonymous": "allow"}
# Events that tell which tier a request's lookup ended at (``requests.Request.tier``).
_EVENT_TIERS = {"singleflight_join": "joined", "respelled_hit": "l1"}


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics for others to add up (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The gateway's series, and cheap counters in front of them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._decisions = Counter(
            "gateway_decisions", "Decisions by outcome and reason.", ["outcome", "reason"], registry=r
        )
        self._lookups = Counter(
            "gateway_cache_lookups",
            "Lookups by tier (l1, cookie_cache, redis, postgres) and result.",
            ["tier", "result"],
            registry=r,
        )
        self._events = Counter(
            "gateway_events",
            "Other events: singleflight_join, respelled_hit, invalidation_session, invalidation_user, "
            "invalidation_flush, invalidation_flush_ignored, invalidation_ignored, eviction, revocation_recheck, "
            "listener_connect, "
            "redis_uncacheable, rules_reload, rules_reload_failed.",
            ["event"],
            registry=r,
        )
        self.backend_seconds = Histogram(
            "gateway_backend_seconds", "Time of one (batched) backend call.", ["backend"], buckets=_BUCKETS, registry=r
        )
        self._gauges = {
            name: Gauge(f"gateway_{name}", text, registry=r, multiprocess_mode="livesum")
            for name, text in (
                ("pool_connections", "Postgres connections open in the pools."),
                ("pool_connections_idle", "Idle Postgres connections in the pools."),
                ("listener_connected", "Workers whose LISTEN connection is up."),
                ("redis_degraded", "Workers currently skipping Redis."),
                ("requests_in_flight", "Decision requests being answered (waiting on a lookup), all workers."),
            )
        }
        self.decision_seconds = latency.DecisionSeconds(
            Histogram(
                "gateway_decision_seconds",
                "Time to decide a request, by endpoint (validate, v1_validate, get_session) and the tier that "
                "answered (l1, cookie_cache, redis, postgres, jwt, joined: a lookup in flight, none).",
                ["endpoint", "tier"],
                buckets=latency.BUCKETS,
                registry=r,
            )
        )
        self.in_flight = 0  # decision requests awaiting their answer in this worker (``requests_in_flight``)
        build_info(r)
        self._process = ProcessSampler(r, multiprocess=multiprocess_mode())
        self._counts: defaultdict[tuple[str, ...], int] = defaultdict(int)
        # Forward-auth answers served from the LRU, the hottest path: a plain integer, which
        # ``flush`` adds to both the allowed decisions and the L1 hits.
        self.fast_hits = 0
        self.samplers: list[Callable[[], dict[str, float]]] = []

    def decision(self, reason: Reason | str) -> None:
        """Count one answer to a validation request."""
        self._counts["d", reason] += 1

    def lookup(self, tier: str, result: str) -> None:
        """Count one cache or store lookup; the request being decided (if any) last consulted ``tier``."""
        self._counts["l", tier, result] += 1
        request = CURRENT.get()
        if request is not None:
            request.tier = tier

    def event(self, name: str) -> None:
        """Count one event."""
        self._counts["e", name] += 1
        tier = _EVENT_TIERS.get(name)
        if tier is not None:
            request = CURRENT.get()
            if request is not None:
                request.tier = tier

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus series; sample the gauges."""
        counts, self._counts = self._counts, defaultdict(int)
        fast, self.fast_hits = self.fast_hits, 0
        if fast:
            counts["d", "ok"] += fast
            counts["l", "l1", "hit"] += fast
        for key, n in counts.items():
            if key[0] == "d":
                self._decisions.labels(_OUTCOMES.get(key[1], "deny"), key[1]).inc(n)
            elif key[0] == "l":
                self._lookups.labels(key[1], key[2]).inc(n)
            else:
                self._events.labels(key[1]).inc(n)
        self.decision_seconds.flush()
        self._gauges["requests_in_flight"].set(self.in_flight)
        for sample in self.samplers:
            for name, value in sample().items():
                self._gauges[name].set(value)
        self._process.sample()

    def exposition(self) -> bytes:
        """The text format of every series: summed over the workers in multiprocess mode."""
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
