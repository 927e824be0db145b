"""Access-log lines: JSON, batched, sampled by trace id."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.http.trace import Span, hop
from shoal.mesh.access_log import BATCH, AccessLog, Entry
from shoal.resources.endpoint import Endpoint

T = 1_764_943_387.1234  # 2025-12-05T14:03:07.123Z


def test_a_line_is_one_json_object_of_every_field_in_order() -> None:
    """The entry's raw facts become the line's fields when its batch is written: text
    decoded, times in ms, who answered from the endpoint; a fact not known is null."""
    sink = io.BytesIO()
    log = AccessLog(sink, "gateway", clock=lambda: T + 0.25)
    entry = Entry(T, "10.0.0.1", "HTTP/1.1", b"GET", b'/a?b="c"\n')
    entry.authority, entry.upstream, entry.bytes_in = "hello", 0.0125, 3
    entry.span = hop(None, random.Random(1))
    entry.endpoint = Endpoint(
        id="hello-1", service="hello", revision="v1", node="n1", address="127.0.0.1", port=1
    )
    entry.status, entry.attempts = 200, 1
    log.done(entry)
    assert sink.getvalue() == b""  # gathered, not written yet
    log.flush()
    [line] = sink.getvalue().decode().splitlines()
    assert json.loads(line) == {
        "time": "2025-12-05T14:03:07.123Z",
        "component": "gateway",
        "request_id": None,
        "trace_id": entry.span.trace_id,
        "span_id": entry.span.span_id,
        "parent_span_id": None,
        "client": "10.0.0.1",
        "protocol": "HTTP/1.1",
        "method": "GET",
        "authority": "hello",
        "path": '/a?b="c"\n',
        "status": 200,
        "cause": None,
        "route": None,
        "service": "hello",
        "revision": "v1",
        "instance": "hello-1",
        "node": "n1",
        "attempts": 1,
        "bytes_in": 3,
        "bytes_out": None,
        "duration_ms": 250.0,
        "upstream_ms": 12.5,
    }
    assert list(json.loads(line)) == list(log.fields(entry))  # (the order is the line's)


def test_lines_are_written_in_batches() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, "router")
    for i in range(BATCH + 3):
        entry = Entry(T, None, "HTTP/2", b"GET", f"/{i}".encode())
        entry.listener, entry.caller = "inbound", "spiffe://shoal.local/ns/default/sa/a"
        log.done(entry)
    lines = sink.getvalue().decode().splitlines()
    assert [json.loads(x)["path"] for x in lines] == [f"/{i}" for i in range(BATCH)]
    assert json.loads(lines[0])["caller"].endswith("/sa/a")  # a router's own fields
    log.flush()
    assert len(sink.getvalue().decode().splitlines()) == BATCH + 3


@pytest.mark.parametrize(("sample", "share"), [(1.0, 1.0), (0.0, 0.0), (0.25, 0.25)])
def test_sampling_follows_the_trace_id(sample: float, share: float) -> None:
    log = AccessLog(io.BytesIO(), "x", sample=sample)
    ids = [f"{i:024x}{i * 2654435761 % 2**32:08x}" for i in range(4000)]
    kept = sum(log.kept(t) for t in ids) / len(ids)
    assert abs(kept - share) < 0.03
    assert all(log.kept(t) == log.kept(t) for t in ids[:10])  # the same on every hop


def test_the_text_format_is_one_line_of_the_same_fields() -> None:
    """``text``: time, component, client, the quoted request, status, bytes, duration, then
    name=value for the fields that have one; a quote in the path cannot end the request."""
    sink = io.BytesIO()
    log = AccessLog(sink, "gateway/0", line_format="text", clock=lambda: 10.25)
    entry = Entry(10.0, "10.0.0.1", "HTTP/2", b"GET", b'/a"b?x=1')
    entry.authority, entry.rid = b"hello", b"r1"
    entry.span = Span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None, "01")
    entry.endpoint = Endpoint(
        id="h", service="hello", revision="v1", node="n1", address="127.0.0.1", port=1
    )
    entry.answered(503, "no_healthy_upstream")
    log.done(entry)
    log.flush()
    assert sink.getvalue().decode() == (
        '1970-01-01T00:00:10.000Z gateway/0 10.0.0.1 "GET hello /a%22b?x=1 HTTP/2" 503 0 250.0 '
        "rid=r1 trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 service=hello "
        "revision=v1 instance=h node=n1 cause=no_healthy_upstream\n"
    )


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        AccessLog(io.BytesIO(), "x", line_format="xml")


_text_or_none = st.none() | st.text()
_count = st.none() | st.integers(min_value=0, max_value=2**40)


@given(
    client=_text_or_none,
    method=st.binary(min_size=1),
    target=st.binary(),
    authority=st.none() | st.text() | st.binary(),
    rid=st.none() | st.binary(),
    parent=st.none() | st.just("00f067aa0ba902b7"),
    status=st.none() | st.integers(min_value=100, max_value=599),
    cause=_text_or_none,
    route=_text_or_none,
    served=st.booleans(),
    counts=st.tuples(_count, _count, _count),
    times=st.tuples(st.floats(0, 10), st.none() | st.floats(0, 10)),
    listener=st.none() | st.sampled_from(["inbound", "outbound"]),
    caller=_text_or_none,
)
def test_the_json_line_is_what_json_dumps_writes_of_the_fields(**kw: Any) -> None:
    """The line written straight from an entry parses to exactly its fields, whatever the
    text in it (quotes, control characters, non-ASCII, Latin-1 bytes)."""
    log = AccessLog(io.BytesIO(), 'gateway "0"', clock=lambda: T + kw["times"][0])
    entry = Entry(T, kw["client"], "HTTP/2", kw["method"], kw["target"])
    entry.authority, entry.rid, entry.status, entry.cause = (
        kw["authority"],
        kw["rid"],
        kw["status"],
        kw["cause"],
    )
    entry.route, entry.listener, entry.caller = kw["route"], kw["listener"], kw["caller"]
    entry.attempts, entry.bytes_in, entry.bytes_out = kw["counts"]
    entry.upstream = kw["times"][1]
    entry.span = Span("4bf92f3577b34da6a3ce929d0e0e4736", "1027c4d1c386bbc4", kw["parent"])
    if kw["served"]:
        entry.endpoint = Endpoint(
            id='i"\n', service="s\u00e9", revision="r", node="n", address="127.0.0.1", port=1
        )
    log.done(entry)
    line = log.json_line(entry)
    assert line == json.dumps(log.fields(entry), separators=(",", ":"))
