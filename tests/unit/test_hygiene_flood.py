"""HTTP/2 flood detection: token buckets per frame kind and the empty-DATA run, at literal times."""

from __future__ import annotations

from shoal.gateway.flood import FloodGuard, Frame
from shoal.http.limits import EdgeLimits, FloodBudget

LIMITS = EdgeLimits(
    h2_ping=FloodBudget(burst=3, rate=1.0),
    h2_settings=FloodBudget(burst=2, rate=0.5),
    h2_reset=FloodBudget(burst=5, rate=10.0),
    h2_max_empty_frames=2,
)


def test_burst_then_flood() -> None:
    """A full bucket allows ``burst`` frames at once; the next one is a flood, with a reason."""
    guard = FloodGuard(LIMITS, now=100.0)
    assert [guard.on_frame(Frame.PING, 100.0) for _ in range(3)] == [None, None, None]
    reason = guard.on_frame(Frame.PING, 100.0)
    assert reason is not None and "PING" in reason


def test_refill_at_rate() -> None:
    """Tokens come back at ``rate`` per second, never above ``burst``: a steady trickle at the
    rate is never a flood."""
    guard = FloodGuard(LIMITS, now=0.0)
    for _ in range(3):
        assert guard.on_frame(Frame.PING, 0.0) is None
    for second in range(1, 100):
        assert guard.on_frame(Frame.PING, float(second)) is None
    assert guard.on_frame(Frame.PING, 99.0) is not None
    assert guard.on_frame(Frame.PING, 1000.0) is None  # refilled, capped at burst
    assert guard.on_frame(Frame.PING, 1000.0) is None
    assert guard.on_frame(Frame.PING, 1000.0) is None
    assert guard.on_frame(Frame.PING, 1000.0) is not None


def test_kinds_have_separate_budgets() -> None:
    """Spending the PING budget leaves SETTINGS and RST_STREAM untouched."""
    guard = FloodGuard(LIMITS, now=0.0)
    for _ in range(3):
        guard.on_frame(Frame.PING, 0.0)
    assert guard.on_frame(Frame.SETTINGS, 0.0) is None
    assert guard.on_frame(Frame.SETTINGS, 0.0) is None
    assert guard.on_frame(Frame.SETTINGS, 0.0) is not None
    assert all(guard.on_frame(Frame.RESET, 0.0) is None for _ in range(5))
    assert guard.on_frame(Frame.RESET, 0.0) is not None


def test_empty_data_run() -> None:
    """More than h2_max_empty_frames empty DATA frames in a row is a flood; a DATA frame with
    payload or a new request in between resets the run. The clock plays no part."""
    guard = FloodGuard(LIMITS, now=0.0)
    for between in (Frame.DATA, Frame.HEADERS):
        assert guard.on_frame(Frame.EMPTY_DATA, 0.0) is None
        assert guard.on_frame(Frame.EMPTY_DATA, 0.0) is None
        assert guard.on_frame(between, 0.0) is None
    assert guard.on_frame(Frame.EMPTY_DATA, 5.0) is None
    assert guard.on_frame(Frame.EMPTY_DATA, 5.0) is None
    reason = guard.on_frame(Frame.EMPTY_DATA, 5.0)
    assert reason is not None and "empty DATA" in reason


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    """A time earlier than the last one adds no tokens."""
    guard = FloodGuard(LIMITS, now=10.0)
    for _ in range(3):
        guard.on_frame(Frame.PING, 10.0)
    assert guard.on_frame(Frame.PING, 5.0) is not None


def test_window_updates_are_budgeted_by_data_sent() -> None:
    """1 + 2 x (streams + 10 per DATA frame sent) (Envoy's formula), then a flood."""
    guard = FloodGuard(EdgeLimits(), 0.0)
    assert guard.on_frame(Frame.HEADERS, 0.0) is None  # one stream: room for 3
    for _ in range(3):
        assert guard.on_frame(Frame.WINDOW_UPDATE, 0.0) is None
    guard.data_sent()  # room for 20 more
    for _ in range(20):
        assert guard.on_frame(Frame.WINDOW_UPDATE, 0.0) is None
    reason = guard.on_frame(Frame.WINDOW_UPDATE, 0.0)
    assert reason is not None and "WINDOW_UPDATE flood" in reason
