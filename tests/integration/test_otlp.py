"""Spans over OTLP/HTTP to a real receiver: an HTTP server the test starts, decoding each
export with OpenTelemetry's own protobuf definitions (what a Collector does). Every hop of a
request through the mesh (gateway, router inbound to hello, router outbound from hello, router
inbound to world) arrives as a span of one trace, each the next one's parent, with the ids the
hops put in ``traceparent``; a client's trace id is kept."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from shoal.resources.manifest import load_files
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, ready, running_cluster
from tests.support.wait import eventually

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Received:
    """A span and the service (resource ``service.name``) that sent it."""

    service: str
    span: Span


@dataclass
class Receiver:
    url: str
    spans: list[Received] = field(default_factory=list)


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP trace receiver (protobuf) on a loopback port."""
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}")

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    receiver.spans.append(Received(attributes["service.name"], span))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


def attribute(span: Span, key: str) -> str | int | None:
    for a in span.attributes:
        if a.key == key:
            return a.value.string_value or a.value.int_value
    return None


async def test_every_hop_exports_its_span(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    async with (
        otlp_receiver() as receiver,
        running_cluster(redis, redis_url, keys, tmp_path, otlp_endpoint=receiver.url) as cluster,
    ):
        await cluster.client.apply(load_files([str(EXAMPLE)]))
        await cluster.instances(
            lambda f: len(ready(f, "world")) == 1 and len(ready(f, "hello")) == 4
        )
        async with aiohttp.ClientSession() as session:
            for i in range(10):
                sent = {"Host": "hello"}
                if i == 0:
                    sent["traceparent"] = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
                async with session.get(cluster.gateway_url + "/chain", headers=sent) as r:
                    assert r.status == 200
        await eventually(
            lambda: receiver.spans,
            "40 spans at the receiver",
            until=lambda spans: len(spans) >= 40,
            show=lambda spans: str(len(spans)),
        )
    edge = [s for s in receiver.spans if s.service == "shoal-gateway"]
    assert len(edge) == 10
    traces = set()
    for first in edge:
        assert first.span.name == "GET /chain" and first.span.kind == Span.SPAN_KIND_SERVER
        assert attribute(first.span, "http.response.status_code") == 200
        chain = [first]
        for _ in range(3):  # inbound to hello, outbound from hello, inbound to world
            children = [
                s for s in receiver.spans if s.span.parent_span_id == chain[-1].span.span_id
            ]
            assert len(children) == 1, [c.span.name for c in children]
            chain.append(children[0])
        into_hello, out_of_hello, into_world = (c.span for c in chain[1:])
        assert {c.span.trace_id for c in chain} == {first.span.trace_id}
        assert [c.service for c in chain[1:]] == ["shoal-router"] * 3
        assert attribute(into_hello, "shoal.service") == "hello"
        assert out_of_hello.kind == Span.SPAN_KIND_CLIENT
        assert attribute(into_world, "shoal.service") == "world"
        assert all(c.span.start_time_unix_nano <= c.span.end_time_unix_nano for c in chain)
        traces.add(first.span.trace_id.hex())
    assert CLIENT_TRACE in traces and len(traces) == 10
