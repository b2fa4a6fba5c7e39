"""OpenTelemetry tracing, opt-in through the standard ``OTEL_*`` variables; off, nothing is imported.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or, without it, when an
OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``); off
with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The SDK reads the rest itself:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the resource), ``OTEL_TRACES_SAMPLER``
(by default parent-based: a request whose ``traceparent`` is not sampled makes no span), the
exporter's ``OTEL_EXPORTER_OTLP_*`` (headers, timeout, compression) and ``OTEL_BSP_*`` (batching).
The packages come with the ``otel`` extra (``pip install 'better-auth-gateway[otel]'``), imported
only here and only when tracing is on: the default install and the hit path pay nothing.

Spans are made only for lookups that leave the process (``gateway.lookup.traced``: a Redis read,
a Postgres query), never on an L1 hit. Their parent is the ``traceparent`` of the request that
started the lookup (``requests.CURRENT``); a lookup batched for several requests is one span, in
the trace of the request that opened the batch. A span never carries a token, a key or a DSN.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from gateway.core.errors import ConfigError
from gateway.telemetry.requests import CURRENT

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

_EXTRA = "pip install 'better-auth-gateway[otel]'"


def exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; none: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [name for name in (n.strip() for n in named.split(",")) if name and name != "none"]


def problems(environ: Mapping[str, str]) -> list[str]:
    """What keeps tracing from starting as the ``OTEL_*`` variables ask, each said with its fix."""
    try:
        _exporter_classes(environ)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _protocol(environ: Mapping[str, str]) -> str:
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _exporter_classes(environ: Mapping[str, str]) -> list[Any]:
    """The exporter classes asked for, imported; ``ConfigError`` naming each one that can't be."""
    found: list[Any] = []
    problems: list[str] = []
    for name in exporters(environ):
        try:
            if name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

                found.append(ConsoleSpanExporter)
            elif name == "otlp" and _protocol(environ) == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]  # noqa: PLC0415
                    OTLPSpanExporter as Grpc,
                )

                found.append(Grpc)
            elif name == "otlp" and _protocol(environ) == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

                found.append(OTLPSpanExporter)
            else:
                problems.append(
                    f"OTEL_TRACES_EXPORTER: {name!r} (protocol {_protocol(environ)!r}) is not supported: "
                    "otlp (http/protobuf or grpc), console or none"
                )
        except ImportError as exc:
            extra = "and opentelemetry-exporter-otlp-proto-grpc " if "grpc" in str(exc.name) else ""
            problems.append(f"OTEL_* variables ask for tracing ({name}), whose packages are missing: {_EXTRA} {extra}")
    if problems:
        raise ConfigError(problems)
    return found


class Tracing:
    """The worker's tracer: spans around the lookups that leave the process."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415

        self._provider = provider
        self._tracer = provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()
        self._client = SpanKind.CLIENT
        self._status: Any = Status
        self._error = StatusCode.ERROR

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, str | int]) -> Iterator[Any]:
        """A client span named ``name``, child of the current request's ``traceparent`` (if any).

        An exception marks it failed with the exception's class name only (its text may name a host).
        """
        request = CURRENT.get()
        parent = None
        if request is not None:
            attributes = {**attributes, "gateway.request_id": request.id}
            if request.traceparent:
                parent = self._propagator.extract({"traceparent": request.traceparent})
        span = self._tracer.start_span(name, context=parent, kind=self._client, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            self.failed(span, type(exc).__name__)
            raise
        finally:
            span.end()

    def failed(self, span: Any, why: str) -> None:
        """Mark ``span`` failed (a lookup that returned no answer without raising)."""
        span.set_status(self._status(self._error, why))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is left and stop (the worker is closing), waiting at most ``timeout_s``.

        An export to a collector that is away retries for its whole timeout
        (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s): a worker must not outstay its shutdown grace for it.
        """
        closing = threading.Thread(target=self._provider.shutdown, name="otel-shutdown", daemon=True)
        closing.start()
        closing.join(timeout_s)


def open_tracing(environ: Mapping[str, str]) -> Tracing | None:
    """The tracer the ``OTEL_*`` variables ask for, or ``None`` when tracing is off.

    Raises:
        ConfigError: tracing is asked for, but an exporter is unknown or its packages are missing.
    """
    classes = _exporter_classes(environ)
    if not classes:
        return None
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):  # neither says
        resource = resource.merge(Resource({"service.name": "better-auth-gateway"}))
    provider = TracerProvider(resource=resource)
    for exporter in classes:
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    return Tracing(provider)
