"""Tracing: on only when the OTEL_* variables ask; spans for Redis and Postgres lookups, none for an L1 hit."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.postgres import seed
from gateway.telemetry.tracing import exporters, open_tracing, problems
from tests.support.credentials import SECRET, cookie
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from tests.support.server import Server


def test_tracing_is_off_unless_an_otel_variable_asks() -> None:
    """No exporter named and no endpoint: off; an endpoint alone means otlp; none and OTEL_SDK_DISABLED turn it off."""
    assert exporters({}) == []
    assert open_tracing({}) is None
    assert exporters({"OTEL_SERVICE_NAME": "gw"}) == []
    assert exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert exporters({"OTEL_TRACES_EXPORTER": "console, otlp"}) == ["console", "otlp"]
    assert exporters({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == []
    assert exporters({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []


def test_an_unsupported_exporter_is_a_configuration_problem() -> None:
    """An exporter the gateway can't build is said, with what is supported; a supported one is no problem."""
    expected = (
        "OTEL_TRACES_EXPORTER: 'zipkin' (protocol 'http/protobuf') is not supported: "
        "otlp (http/protobuf or grpc), console or none"
    )
    assert problems({"OTEL_TRACES_EXPORTER": "zipkin"}) == [expected]
    assert problems({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) != []
    assert problems({"OTEL_TRACES_EXPORTER": "otlp"}) == []


class Collector:
    """A real OTLP/HTTP receiver: decodes each export (protobuf) and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(self.path, body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.raw: list[bytes] = []

    def receive(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces"
        self.raw.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scoped in resource.scope_spans:
                for span in scoped.spans:
                    attributes = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "service": service,
                            "attributes": attributes,
                        }
                    )

    def of(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in self.spans if span["trace_id"] == trace_id]


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP collector on a free port, for the test's gateway to export to."""
    collector = Collector()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.server.shutdown()
        collector.server.server_close()


def traceparent(n: int) -> tuple[str, str, str]:
    """A sampled traceparent of trace ``n``: (header, trace id, parent span id)."""
    trace_id, span_id = f"{n:032x}", f"{n + 1:016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def test_lookups_that_leave_the_process_are_spans_of_the_requests_trace(
    db: asyncpg.Connection, database: str, redis_url: str, redis_prefix: str, collector: Collector, start_gateway: Any
) -> None:
    """A miss exports a Redis and a Postgres span, children of its traceparent; an L1 hit exports none."""
    user = await seed.create_user(db, email="trace@example.com")
    first, second = await seed.create_session(db, user), await seed.create_session(db, user)
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    gw: Server = start_gateway(env)
    (miss, miss_trace, miss_parent), (hit, hit_trace, _), (last, last_trace, _) = (traceparent(n) for n in (1, 5, 9))
    async with httpx.AsyncClient(timeout=5) as c:
        for token, header in ((first, miss), (first, hit), (second, last)):
            r = await c.get(gw.url + "/validate", headers={**cookie(token), "traceparent": header})
            assert r.status_code == 200
    # Spans leave in the order they end: once the last miss's are in, the hit's would be too.
    await eventually(lambda: len(collector.of(last_trace)) >= 2, within=10)
    spans = collector.of(miss_trace)
    assert sorted(span["name"] for span in spans) == ["postgres lookup", "redis lookup"]
    for span in spans:
        assert span["parent_span_id"] == miss_parent
        assert span["service"] == "gateway-under-test"
        assert span["attributes"]["gateway.request_id"] == miss_trace  # no X-Request-ID: the trace ID
    assert {span["attributes"]["db.system.name"] for span in spans} == {"redis", "postgresql"}
    assert collector.of(hit_trace) == []
    exported = b"".join(collector.raw)
    for secret in (first, second, SECRET):
        assert secret.encode() not in exported
