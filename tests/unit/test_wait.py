"""The tests' polling helpers: they return the value that satisfied the condition, treat the
listed exceptions as "not yet", and fail at the deadline saying what they waited for."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.wait import eventually, eventually_sync


async def test_eventually_returns_the_first_value_that_satisfies() -> None:
    """A sync probe is polled until ``until`` holds; that value is returned."""
    counter = itertools.count()
    assert await eventually(lambda: next(counter), "3", until=lambda n: n >= 3) == 3


async def test_eventually_awaits_an_async_probe_and_skips_ignored_errors() -> None:
    """An async probe is awaited; an ignored exception counts as not yet."""
    calls = 0

    async def probe() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not yet")
        return "up"

    assert await eventually(probe, "up", ignore=(ConnectionError,)) == "up"


async def test_eventually_fails_naming_what_and_the_last_value() -> None:
    """At the deadline the AssertionError names the wait, the last value and the detail."""
    with pytest.raises(AssertionError, match=r"not within 0.1s: never \(last seen: 0\)\nlog"):
        await eventually(lambda: 0, "never", timeout=0.1, detail=lambda: "log")


async def test_eventually_bounds_a_hanging_probe() -> None:
    """A probe still running at the deadline fails the wait then."""
    with pytest.raises(AssertionError, match="the probe never returned"):
        await eventually(lambda: asyncio.Event().wait(), "a hang", timeout=0.1)


async def test_eventually_propagates_other_errors() -> None:
    """An exception not listed in ``ignore`` is the test's failure, at once."""
    with pytest.raises(ZeroDivisionError):
        await eventually(lambda: 1 / 0, "a division")


def test_eventually_sync_polls_and_fails_with_the_last_error() -> None:
    """The sync helper returns what satisfied, and at the deadline names the last error."""
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter), "2", until=lambda n: n == 2) == 2

    def refused() -> int:
        raise ConnectionRefusedError("refused")

    with pytest.raises(AssertionError, match="ConnectionRefusedError"):
        eventually_sync(refused, "a server", timeout=0.05, ignore=(OSError,))
