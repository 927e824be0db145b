"""Each hop's span exported over OTLP/HTTP (``--otlp-endpoint``), with ``opentelemetry-sdk``.

A proxy already knows each request's span (:mod:`shoal.http.trace`: the trace id, its own span
id and its parent's, the ones it puts in ``traceparent``) and the rest of its access-log entry;
when it is over, :meth:`SpanExport.export` turns the entry into an OpenTelemetry span with those
very ids — so the spans of all hops, and those of apps that forward ``traceparent``, form one
trace in any OTLP backend (Jaeger, Tempo, an OpenTelemetry Collector) — and hands it to the
SDK's batch processor, which sends batches from a thread of its own (every half second, or
512 spans) to ``<endpoint>/v1/traces``. Spans are kept or not with the access log's sampling
(by trace id, so every hop makes the same choice). A backend that is down costs dropped spans
(the queue is bounded), never a request.

Span: name ``<METHOD> <path without query>``; kind SERVER (the gateway, a router's inbound
side) or CLIENT (a router's outbound side: the call an instance makes); status ERROR for a 5xx
or no answer; attributes after OpenTelemetry's HTTP conventions (``http.request.method``,
``url.path``, ``server.address``, ``http.response.status_code``, ``client.address``,
``network.protocol.version``) and Shoal's (``shoal.request_id``, ``shoal.service``,
``shoal.revision``, ``shoal.instance``, ``shoal.node``, ``shoal.cause``, ``shoal.attempts``);
resource ``service.name`` ``shoal-gateway`` or ``shoal-router``, ``service.instance.id`` the
component.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

__all__ = ["SpanExport", "span_of"]

_SCOPE = InstrumentationScope("shoal")
_ATTRIBUTES = {  # access-log field → span attribute
    "method": "http.request.method",
    "authority": "server.address",
    "status": "http.response.status_code",
    "client": "client.address",
    "request_id": "shoal.request_id",
    "service": "shoal.service",
    "revision": "shoal.revision",
    "instance": "shoal.instance",
    "node": "shoal.node",
    "cause": "shoal.cause",
    "attempts": "shoal.attempts",
    "caller": "shoal.caller",
}


def _context(trace_id: str, span_id: str, remote: bool) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), remote, TraceFlags(TraceFlags.SAMPLED))


def span_of(
    entry: dict[str, Any], start: float, end: float, resource: Resource
) -> ReadableSpan | None:
    """The span of a request's access-log ``entry`` (``start``/``end``: epoch seconds); None
    when the entry has no span (a request refused before it got one)."""
    trace_id, span_id = entry.get("trace_id"), entry.get("span_id")
    if not trace_id or not span_id:
        return None
    parent = entry.get("parent_span_id")
    path = str(entry.get("path") or "").partition("?")[0]
    attributes = {
        name: entry[field] for field, name in _ATTRIBUTES.items() if entry.get(field) is not None
    }
    attributes["url.path"] = path
    protocol = entry.get("protocol")
    if protocol:
        attributes["network.protocol.version"] = str(protocol).removeprefix("HTTP/")
    status = entry.get("status")
    failed = status is None or status >= 500
    return ReadableSpan(
        name=f"{entry.get('method') or 'HTTP'} {path}",
        context=_context(trace_id, span_id, False),
        parent=_context(trace_id, parent, True) if parent else None,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.CLIENT if entry.get("listener") == "outbound" else SpanKind.SERVER,
        status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
        start_time=int(start * 1e9),
        end_time=int(end * 1e9),
        instrumentation_scope=_SCOPE,
    )


class SpanExport:
    """Sends a proxy's spans to the OTLP/HTTP collector at ``endpoint`` (its base URL)."""

    def __init__(self, endpoint: str, component: str) -> None:
        kind = "shoal-gateway" if component.startswith("gateway") else "shoal-router"
        self.resource = Resource.create({"service.name": kind, "service.instance.id": component})
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)
        self._processor = BatchSpanProcessor(exporter, schedule_delay_millis=500)

    def export(self, entry: dict[str, Any], start: float, end: float) -> None:
        """Queue the span of a finished request's ``entry``."""
        span = span_of(entry, start, end, self.resource)
        if span is not None:
            self._processor.on_end(span)

    def close(self) -> None:
        """Send what is queued (waiting a few seconds at most) and stop."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]
