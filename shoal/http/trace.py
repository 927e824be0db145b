"""W3C Trace Context for one hop: each proxy a request passes through is a span of its trace.

A request's ``traceparent`` (``00-<trace id>-<parent span id>-<flags>``) is read; a valid one
keeps its trace id and flags, and the caller's span becomes this hop's parent; without one (or
with one that is not valid) this hop starts a trace, sampled. Either way this hop gets a new
span id and sends ``traceparent`` naming it to the next hop, so the spans of a request chain
gateway → router → instance, and on through the instance's own calls when it forwards the
header it received (what Istio asks of an app too; ``tracestate`` travels unchanged). Pure: the
random source is an argument.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

__all__ = ["Span", "hop", "parse"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"


class Span(NamedTuple):
    """This hop's span: its trace, its own id, its parent's (None: it starts the trace)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    flags: str = SAMPLED

    def header(self) -> bytes:
        """The ``traceparent`` value that names this span as the next hop's parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}".encode()


def parse(value: str | None) -> tuple[str, str, str] | None:
    """``(trace id, parent span id, flags)`` of a valid ``traceparent``, else None (version
    ff, all-zero ids, or anything else than lower-case hex fields; a later version may add
    fields after the four)."""
    if value is None:
        return None
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def _span_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64) or 1:016x}"


def hop(traceparent: str | None, rng: random.Random) -> Span:
    """This hop's span for a request that came with ``traceparent`` (or none)."""
    parsed = parse(traceparent)
    if parsed is None:
        return Span(f"{rng.getrandbits(128) or 1:032x}", _span_id(rng), None)
    trace_id, parent_id, flags = parsed
    return Span(trace_id, _span_id(rng), parent_id, flags)
