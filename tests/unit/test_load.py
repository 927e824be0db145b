"""LoadMeter: time-weighted concurrency and arrivals per revision, with literal times."""

from __future__ import annotations

import pytest

from shoal.mesh.load import LoadMeter


def test_average_is_time_weighted_not_a_snapshot() -> None:
    """Two requests of 0.25 s each in a 1 s window average 0.5 in flight, though none is in
    flight when the window is read."""
    meter = LoadMeter(0.0)
    meter.change("hello/v1", 1, 0.1, arrival=True)
    meter.change("hello/v1", -1, 0.35)
    meter.change("hello/v1", 1, 0.5, arrival=True)
    meter.change("hello/v1", -1, 0.75)
    assert meter.read(1.0) == {"hello/v1": (pytest.approx(0.5), 2)}
    assert meter.in_flight("hello/v1") == 0


def test_a_long_request_counts_in_every_window() -> None:
    """A request in flight across reads counts fully in each window it spans; arrivals are
    counted once, in the window they arrived in."""
    meter = LoadMeter(0.0)
    meter.change("a/v1", 1, 0.5, arrival=True)
    assert meter.read(1.0) == {"a/v1": (pytest.approx(0.5), 1)}
    assert meter.read(2.0) == {"a/v1": (pytest.approx(1.0), 0)}
    meter.change("a/v1", -1, 2.25)
    assert meter.read(3.0) == {"a/v1": (pytest.approx(0.25), 0)}
    assert meter.read(4.0) == {}


def test_fractional_changes_and_floor_at_zero() -> None:
    """Held requests may be spread over several revisions (fractions); in flight never goes
    below zero."""
    meter = LoadMeter(10.0)
    meter.change("s/v1", 0.5, 10.0)
    meter.change("s/v2", 0.5, 10.0)
    meter.change("s/v1", -2, 10.5)
    assert meter.read(11.0) == {
        "s/v1": (pytest.approx(0.25), 0),
        "s/v2": (pytest.approx(0.5), 0),
    }
    assert meter.in_flight("s/v1") == 0


def test_keys_are_separate_and_idle_ones_disappear() -> None:
    """Each key has its own gauge; a key with nothing in a window is not reported."""
    meter = LoadMeter(0.0)
    meter.change("a/v1", 1, 0.0, arrival=True)
    meter.change("b/v1", 1, 0.5, arrival=True)
    meter.change("b/v1", -1, 1.0)
    assert meter.read(1.0) == {"a/v1": (1.0, 1), "b/v1": (pytest.approx(0.5), 1)}
    assert set(meter.read(2.0)) == {"a/v1"}
