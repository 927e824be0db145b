"""The edge's limits: sizes, counts, deadlines and HTTP/2 flood budgets, in one validated value.

Stock hypercorn leaves most of these open (FACTS.md); :mod:`shoal.gateway.hypercorn_edge`
passes the ones hypercorn knows to its ``Config`` and enforces the others itself, and
:mod:`shoal.gateway.hygiene` checks the request head against them. Sizes are bytes, times are
seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from shoal.errors import UserError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodBudget:
    """A token bucket: ``burst`` frames at once, refilled at ``rate`` frames per second."""

    burst: int
    rate: float

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise UserError(f"flood budget burst must be >= 1 (got {self.burst!r})")
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise UserError(f"flood budget rate must be a finite number >= 0 (got {self.rate!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeLimits:
    """Every limit the gateway enforces on what clients send it."""

    max_header_bytes: int = 60 * KiB  # sum of len(name) + len(value) + 4 over all fields → 431
    max_header_count: int = 100  # header fields in one request → 431
    max_uri_bytes: int = 8 * KiB  # request target, path and query → 414
    max_body_bytes: int = 10 * MiB  # request body; Content-Length over it → 413 before forwarding
    header_timeout: float = 10.0  # HTTP/1.1: first byte of a request head to its end → 408
    body_timeout: float = 120.0  # whole request body, from its head to its last byte → 408
    body_idle_timeout: float = 30.0  # longest gap between two pieces of a request body → 408
    idle_timeout: float = 60.0  # a connection with no request in flight is closed
    read_timeout: float | None = 60.0  # no byte at all from the client for this long → closed
    tls_handshake_timeout: float = 10.0
    max_connections: int = 10_000  # open client connections per gateway process
    backlog: int = 1024  # listen(2) backlog
    h2_max_concurrent_streams: int = 100
    h2_ping: FloodBudget = FloodBudget(burst=50, rate=10.0)
    h2_settings: FloodBudget = FloodBudget(burst=10, rate=1.0)
    h2_priority: FloodBudget = FloodBudget(burst=100, rate=20.0)
    h2_reset: FloodBudget = FloodBudget(burst=100, rate=20.0)  # client RST_STREAMs (rapid reset)
    h2_max_empty_frames: int = 10  # consecutive empty DATA frames without END_STREAM

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FloodBudget) or (value is None and f.name == "read_timeout"):
                continue
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise UserError(f"limits.{f.name} must be a positive number (got {value!r})")
