"""W3C traceparent: kept trace, new span per hop, a fresh trace when absent or invalid."""

from __future__ import annotations

import random

import pytest

from shoal.http.trace import Span, hop, parse

GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_keeps_its_trace_and_becomes_the_parent() -> None:
    span = hop(GIVEN, random.Random(1))
    assert span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_id == "00f067aa0ba902b7" and span.flags == "01"
    assert len(span.span_id) == 16 and span.span_id != span.parent_id
    assert span.header() == f"00-{span.trace_id}-{span.span_id}-01".encode()
    assert hop(GIVEN.replace("-01", "-00"), random.Random(1)).flags == "00"  # not sampled: kept


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "garbage",
        GIVEN.upper(),
        "ff" + GIVEN[2:],
        GIVEN.replace("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 32),
        GIVEN.replace("00f067aa0ba902b7", "0" * 16),
        GIVEN + "-extra",  # version 00 has exactly four fields
    ],
)
def test_without_a_valid_one_a_hop_starts_a_sampled_trace(bad: str | None) -> None:
    assert parse(bad) is None
    span = hop(bad, random.Random(2))
    assert span.parent_id is None and span.flags == "01"
    assert len(span.trace_id) == 32 and span.trace_id != "0" * 32


def test_a_later_version_may_carry_more_fields() -> None:
    assert parse("01" + GIVEN[2:] + "-what-comes") == (GIVEN[3:35], GIVEN[36:52], "01")


def test_hops_chain() -> None:
    rng = random.Random(3)
    gateway = hop(None, rng)
    router = hop(gateway.header().decode(), rng)
    instance_call = hop(router.header().decode(), rng)
    assert gateway.trace_id == router.trace_id == instance_call.trace_id
    assert router.parent_id == gateway.span_id and instance_call.parent_id == router.span_id
    assert isinstance(gateway, Span)
