"""The traced ports: a span per lookup that leaves the process, in the request's trace; none for an L1 hit."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.core.errors import BackendUnavailable
from gateway.credentials.tokens import token_hash
from gateway.lookup.tiers import Tiers
from gateway.lookup.traced import TracedShared, TracedSource
from gateway.telemetry.requests import CURRENT, Request
from gateway.telemetry.tracing import Tracing
from tests.support.memory import MemoryShared, MemorySource, session

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def traced() -> tuple[Tiers, MemorySource, MemoryShared, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    source, shared = MemorySource({"tok": session("u1")}), MemoryShared()
    tiers = Tiers(
        TracedSource(source, tracing),
        TracedShared(shared, tracing),
        max_entries=10,
        ttl_s=30,
        negative_max_entries=10,
        negative_ttl_s=2,
    )
    return tiers, source, shared, exporter


async def test_a_miss_is_a_redis_and_a_postgres_span_under_the_requests_traceparent() -> None:
    """Both spans are children of the request's traceparent, name its request ID, and carry no token."""
    tiers, _, _, exporter = traced()
    token = CURRENT.set(Request("rid-7", f"00-{TRACE}-{PARENT}-01"))
    try:
        loaded = await tiers.load("tok")
    finally:
        CURRENT.reset(token)
    assert loaded.session is not None
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
    assert [s.name for s in spans] == ["postgres lookup", "redis lookup"]
    for span in spans:
        assert span.context is not None
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == PARENT
        assert span.attributes is not None
        assert span.attributes["gateway.request_id"] == "rid-7"
        assert "tok" not in {str(v) for v in span.attributes.values()}
        assert token_hash("tok") not in {str(v) for v in span.attributes.values()}
    assert spans[0].attributes is not None
    assert spans[0].attributes["gateway.batch_size"] == 1


async def test_an_l1_hit_makes_no_span() -> None:
    """Once cached, the same token's lookups stay in the process: nothing more is exported."""
    tiers, _, _, exporter = traced()
    tiers.remember("tok", await tiers.load("tok"))
    exporter.clear()
    assert tiers.cached("tok") is not None
    assert exporter.get_finished_spans() == ()


async def test_failures_mark_the_spans_failed_without_their_text() -> None:
    """An unavailable shared cache and a failing source: spans with status ERROR naming the class only."""
    tiers, source, shared, exporter = traced()
    source.failing, shared.failing = True, True
    with pytest.raises(BackendUnavailable):
        await tiers.load("tok")
    statuses = {s.name: (s.status.status_code, s.status.description) for s in exporter.get_finished_spans()}
    assert statuses == {
        "redis lookup": (StatusCode.ERROR, "unavailable"),
        "postgres lookup": (StatusCode.ERROR, "StoreUnavailable"),
    }


async def test_writes_and_revocations_pass_straight_through() -> None:
    """put, revoke, revoke_users and bump_generation reach the cache untraced."""
    _, _, shared, exporter = traced()
    wrapped = TracedShared(shared, Tracing(TracerProvider()))
    wrapped.put("d1", session("u1"), 0)
    await wrapped.revoke(["d2"])
    await wrapped.revoke_users(["u3"])
    assert await wrapped.bump_generation()
    assert [p[0] for p in shared.puts] == ["d1"]
    assert shared.revocations == [("tokens", ["d2"]), ("users", ["u3"])]
    assert shared.generation == 1
    assert exporter.get_finished_spans() == ()
