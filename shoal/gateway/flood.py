"""HTTP/2 flood detection: the pure decision behind GOAWAY(ENHANCE_YOUR_CALM).

Frames that cost the server work but produce no request are cheap to send in bulk: PINGs and
SETTINGS (each must be acknowledged), standalone PRIORITY and unknown extension frames, streams
opened and reset at once ("rapid reset", CVE-2023-44487, and streams the client makes the server
reset, "MadeYouReset", CVE-2025-8671), empty DATA frames (CVE-2019-9518) and WINDOW_UPDATEs that
open no window anything is waiting on. hypercorn and h2 answer them all without limit.

Theory of operation: one :class:`FloodGuard` per connection. Every such frame spends a token
from the bucket of its kind; a bucket holds ``burst`` tokens and refills at ``rate`` per second,
so a client may send short bursts and a steady trickle but not a flood. Empty DATA frames are
counted instead: more than ``h2_max_empty_frames`` in a row, with no HEADERS or non-empty DATA
between them, is a flood (Envoy's ``max_consecutive_inbound_frames_with_empty_payload``).
WINDOW_UPDATEs are budgeted by what the server sends, as Envoy does: more than
``1 + 2 * (streams + h2_window_updates_per_data * DATA frames sent)`` is a flood. The guard
answers with the reason to close the connection, or ``None``; the caller reads the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shoal.http.limits import EdgeLimits, FloodBudget


class Frame(enum.Enum):
    """The inbound frames the guard looks at."""

    PING = "PING"
    SETTINGS = "SETTINGS"
    PRIORITY = "PRIORITY"  # standalone PRIORITY frames and unknown extension frames
    RESET = "RST_STREAM"
    EMPTY_DATA = "empty DATA"  # no payload and no END_STREAM
    DATA = "DATA"  # DATA with payload (or END_STREAM)
    HEADERS = "HEADERS"  # a new request
    WINDOW_UPDATE = "WINDOW_UPDATE"


@dataclass(slots=True)
class _Bucket:
    burst: int
    rate: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, budget: FloodBudget, now: float) -> _Bucket:
        return cls(budget.burst, budget.rate, float(budget.burst), now)

    def take(self, now: float) -> bool:
        """Spend one token; False when there is none left."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class FloodGuard:
    """Per-connection budgets for frames that produce no request."""

    __slots__ = (
        "_buckets",
        "_data_sent",
        "_empty",
        "_max_empty",
        "_per_data",
        "_streams",
        "_updates",
    )

    def __init__(self, limits: EdgeLimits, now: float) -> None:
        self._buckets = {
            Frame.PING: _Bucket.full(limits.h2_ping, now),
            Frame.SETTINGS: _Bucket.full(limits.h2_settings, now),
            Frame.PRIORITY: _Bucket.full(limits.h2_priority, now),
            Frame.RESET: _Bucket.full(limits.h2_reset, now),
        }
        self._empty = 0
        self._max_empty = limits.h2_max_empty_frames
        self._per_data = limits.h2_window_updates_per_data
        self._streams = self._data_sent = self._updates = 0

    def data_sent(self) -> None:
        """The server sent a DATA frame: room for that many more WINDOW_UPDATEs."""
        self._data_sent += 1

    def on_frame(self, frame: Frame, now: float) -> str | None:
        """Account for one inbound frame; the reason to close the connection, if it must."""
        if frame is Frame.DATA or frame is Frame.HEADERS:
            self._empty = 0
            self._streams += frame is Frame.HEADERS
            return None
        if frame is Frame.WINDOW_UPDATE:
            self._updates += 1
            if self._updates > 1 + 2 * (self._streams + self._per_data * self._data_sent):
                return f"WINDOW_UPDATE flood: over {self._per_data} per DATA frame sent"
            return None
        if frame is Frame.EMPTY_DATA:
            self._empty += 1
            if self._empty > self._max_empty:
                return f"more than {self._max_empty} empty DATA frames in a row"
            return None
        bucket = self._buckets[frame]
        if bucket.take(now):
            return None
        return f"{frame.value} flood: over {bucket.burst} at once or {bucket.rate:g}/s"
