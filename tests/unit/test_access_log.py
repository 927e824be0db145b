"""Access-log lines: JSON, batched, sampled by trace id."""

from __future__ import annotations

import io
import json

import pytest

from shoal.mesh.access_log import AccessLog

T = 1_764_943_387.1234  # 2025-12-05T14:03:07.123Z


def test_a_line_is_one_json_object_with_the_time_and_component() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, "gateway")
    entry = log.entry(T)
    entry.update(status=200, path='/a?b="c"\n')
    log.record(entry)
    assert sink.getvalue() == b""  # gathered, not written yet
    log.flush()
    [line] = sink.getvalue().decode().splitlines()
    assert json.loads(line) == {
        "time": "2025-12-05T14:03:07.123Z",
        "component": "gateway",
        "status": 200,
        "path": '/a?b="c"\n',
    }


def test_lines_are_written_in_batches() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, "gateway")
    for i in range(3):
        log.record({"n": i})
    log.flush()
    assert [json.loads(x)["n"] for x in sink.getvalue().decode().splitlines()] == [0, 1, 2]


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
    entry = log.entry(10.0)
    entry.update(
        client="10.0.0.1",
        protocol="HTTP/2",
        method="GET",
        authority="hello",
        path='/a"b?x=1',
        request_id="r1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        parent_span_id=None,
        service="hello",
        status=503,
        cause="no_healthy_upstream",
    )
    log.done(entry, 10.0)
    log.flush()
    assert sink.getvalue().decode() == (
        '1970-01-01T00:00:10.000Z gateway/0 10.0.0.1 "GET hello /a%22b?x=1 HTTP/2" 503 0 250.0 '
        "rid=r1 trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 service=hello "
        "cause=no_healthy_upstream\n"
    )


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        AccessLog(io.BytesIO(), "x", line_format="xml")
