"""The edge's limits: sizes, counts, deadlines and HTTP/2 flood budgets, in one validated value.

Stock hypercorn 0.18.0 leaves most of these open: no deadline on a request head or body, no cap
on connections, header bytes or URI length once a head is complete, and no budget for HTTP/2
control frames. :mod:`shoal.gateway.hypercorn_edge` passes the ones hypercorn knows to its
``Config`` and enforces the others itself, and :mod:`shoal.gateway.hygiene` checks the request
head against them. Sizes are bytes, times are
seconds. :func:`parse_limits` builds them from the CLI's ``--limit NAME=VALUE`` flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, get_type_hints

from shoal.errors import UserError
from shoal.http.h1 import HeadLimits

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


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


FORWARDING_FIELDS = 16
"""Header fields Shoal's proxies may add to a request on its way in (x-forwarded-for, -proto,
-host, forwarded, x-request-id, x-shoal-*, x-forwarded-client-cert), with room to spare."""
FORWARDING_BYTES = 4 * KiB
"""Bytes those fields, and a route's rewrite, may add to a head."""


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
    websocket_idle_timeout: float = 300.0  # a WebSocket with no byte either way is closed
    read_timeout: float | None = 60.0  # no byte at all from the client for this long → closed
    tls_handshake_timeout: float = 10.0
    max_connections: int = 10_000  # open client connections per gateway process
    # ... of which one client address may hold (behind a load balancer, raise it: every
    # connection then comes from the balancer's address)
    max_connections_per_client: int = 1_000
    backlog: int = 1024  # listen(2) backlog
    h2_max_concurrent_streams: int = 100
    h2_ping: FloodBudget = FloodBudget(burst=50, rate=10.0)
    h2_settings: FloodBudget = FloodBudget(burst=10, rate=1.0)
    h2_priority: FloodBudget = FloodBudget(burst=100, rate=20.0)
    h2_reset: FloodBudget = FloodBudget(burst=100, rate=20.0)  # client RST_STREAMs (rapid reset)
    h2_max_empty_frames: int = 10  # consecutive empty DATA frames without END_STREAM
    # WINDOW_UPDATE frames a client may send per DATA frame the gateway sent (Envoy's
    # max_inbound_window_update_frames_per_data_frame_sent)
    h2_window_updates_per_data: int = 10

    def head_limits(self, *, inner: bool = False) -> HeadLimits:
        """The HTTP/1.1 head limits of the edge, or (``inner``) of a hop behind it, which also
        takes the fields Shoal's proxies add on the way (forwarding headers, a request id,
        the instance's name): what the edge admits, every hop admits."""
        extra_fields, extra_bytes = (FORWARDING_FIELDS, FORWARDING_BYTES) if inner else (0, 0)
        return HeadLimits(
            max_target_bytes=self.max_uri_bytes + extra_bytes,
            max_field_bytes=self.max_header_bytes + extra_bytes,
            max_field_count=self.max_header_count + extra_fields,
        )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FloodBudget) or (value is None and f.name == "read_timeout"):
                continue
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise UserError(f"limits.{f.name} must be a positive number (got {value!r})")


# What a ``--limit NAME=VALUE`` flag accepts, by the field's type. Sizes take binary suffixes only:
# "1MB" could mean 10**6 or 2**20, so it is refused rather than guessed.
_WHOLE = re.compile(r"[0-9]+", re.ASCII)
_SIZE = re.compile(r"([0-9]+)\s*(kib|mib|gib)?", re.ASCII | re.IGNORECASE)
_SECONDS = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*s?", re.ASCII)
_BUDGET = re.compile(r"([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_UNITS = {None: 1, "kib": KiB, "mib": MiB, "gib": GiB}
_OFF = frozenset({"none", "off"})


def _whole(text: str) -> int:
    if not _WHOLE.fullmatch(text):
        raise ValueError("not a whole number, e.g. 100")
    return int(text)


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError("not a size: use bytes or a KiB, MiB or GiB suffix, e.g. 1MiB")
    number, unit = match.groups()
    return int(number) * _UNITS[unit.lower() if unit else None]


def _seconds(text: str) -> float:
    match = _SECONDS.fullmatch(text)
    if match is None:
        raise ValueError("not a number of seconds, e.g. 10, 2.5 or 2.5s")
    return float(match.group(1))


def _seconds_or_off(text: str) -> float | None:
    if text.lower() in _OFF:
        return None
    try:
        return _seconds(text)
    except ValueError:
        raise ValueError("not a number of seconds or off, e.g. 60, 2.5s or off") from None


def _budget(text: str) -> FloodBudget:
    match = _BUDGET.fullmatch(text)
    if match is None:
        raise ValueError(
            "not a flood budget: use BURST/RATE (frames, frames per second), e.g. 50/10"
        )
    return FloodBudget(burst=int(match.group(1)), rate=float(match.group(2)))


def _parser(name: str, hint: object) -> Callable[[str], object]:
    """The value parser for a field of type ``hint``; a field of a type it does not know is a
    programming error, caught when this module is imported."""
    if hint is int:
        return _size if name.endswith("_bytes") else _whole
    if hint is float:
        return _seconds
    if hint == float | None:
        return _seconds_or_off
    if hint is FloodBudget:
        return _budget
    raise TypeError(f"EdgeLimits.{name}: no --limit parser for type {hint!r}")


_HINTS = get_type_hints(EdgeLimits)
_PARSERS = {f.name: _parser(f.name, _HINTS[f.name]) for f in fields(EdgeLimits)}
LIMIT_NAMES = tuple(f.name for f in fields(EdgeLimits))
"""Every name ``--limit`` accepts, in declaration order."""


def parse_limits(
    pairs: Sequence[str], base: EdgeLimits = EdgeLimits(), *, flag: str = "--limit"
) -> EdgeLimits:
    """``base`` with each ``NAME=VALUE`` in ``pairs`` applied in order (a later one wins).

    NAME is a field of :class:`EdgeLimits` (``-`` may stand for ``_``). VALUE is a whole number
    for counts; bytes for ``*_bytes``, optionally with a ``KiB``/``MiB``/``GiB`` suffix; seconds
    for times (``10``, ``2.5``, ``2.5s``), or ``none``/``off`` for ``read_timeout``;
    ``BURST/RATE`` for the ``h2_*`` flood budgets. A bad pair raises :class:`UserError` naming
    ``flag`` and the pair; the result passes :class:`EdgeLimits`' own validation.
    """
    limits = base
    for pair in pairs:
        raw_name, sep, raw_value = pair.partition("=")
        name = raw_name.strip().lower().replace("-", "_")
        if not sep:
            raise UserError(f"{flag} {pair!r}: expected NAME=VALUE, e.g. max_body_bytes=1MiB")
        parse = _PARSERS.get(name)
        if parse is None:
            raise UserError(
                f"{flag} {pair!r}: unknown limit {raw_name.strip()!r}; "
                f"known: {', '.join(LIMIT_NAMES)}"
            )
        change: dict[str, Any] = {}
        try:
            change[name] = parse(raw_value.strip())
            limits = replace(limits, **change)  # EdgeLimits validates the result
        except (ValueError, UserError) as error:
            raise UserError(f"{flag} {pair!r}: {error}") from None
    return limits
