"""Waiting in tests: poll a condition against a deadline instead of sleeping a guess.

:func:`eventually` waits from a coroutine (its probe may be a plain function or a coroutine
function); :func:`eventually_sync` waits from plain code (fixtures that start processes, tests
that drive the CLI). Both call ``probe`` every ``interval`` seconds until ``until`` holds for
what it returned (by default: the value is true) and return that value. An exception whose type
is in ``ignore`` counts as "not yet"; any other one propagates. At the deadline they raise
AssertionError naming what was waited for and the last value (or ignored exception) seen,
rendered by ``show``, followed by ``detail()`` when given (a log tail, say). The async probe
runs under the same deadline, so a probe that hangs fails the wait at the deadline too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT = 10.0  # seconds
INTERVAL = 0.02  # seconds between two probes

Ignored = tuple[type[Exception], ...]


def _true(value: object) -> bool:
    return bool(value)


class _Nothing:
    def __repr__(self) -> str:
        return "nothing: the probe never returned"


_NOTHING: Any = _Nothing()


def _failure(
    what: str,
    timeout: float,
    last: Any,
    show: Callable[[Any], str],
    detail: Callable[[], str] | None,
) -> AssertionError:
    seen = repr(last) if isinstance(last, Exception | _Nothing) else show(last)
    message = f"not within {timeout}s: {what} (last seen: {seen})"
    if detail is not None:
        message += "\n" + detail()
    return AssertionError(message)


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    what: str,
    *,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
    ignore: Ignored = ...,
    show: Callable[[T], str] = ...,
    detail: Callable[[], str] | None = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    what: str,
    *,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
    ignore: Ignored = ...,
    show: Callable[[T], str] = ...,
    detail: Callable[[], str] | None = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    what: str,
    *,
    until: Callable[[Any], object] = _true,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    ignore: Ignored = (),
    show: Callable[[Any], str] = repr,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``probe`` until ``until`` holds for its value and return that value; AssertionError
    naming ``what`` and the last value seen after ``timeout`` seconds (see the module)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = _NOTHING
    while True:
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
        except Exception as e:
            if scope.expired():
                raise _failure(what, timeout, last, show, detail) from None
            if not isinstance(e, ignore):
                raise
            last = e
        else:
            last = value
            if until(value):
                return value
        left = deadline - loop.time()
        if left <= 0:
            raise _failure(what, timeout, last, show, detail)
        await asyncio.sleep(min(interval, left))


def eventually_sync(
    probe: Callable[[], T],
    what: str,
    *,
    until: Callable[[T], object] = _true,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    ignore: Ignored = (),
    show: Callable[[T], str] = repr,
    detail: Callable[[], str] | None = None,
) -> T:
    """:func:`eventually` for plain code: blocks the thread between probes."""
    deadline = time.monotonic() + timeout
    last: Any = _NOTHING
    while True:
        try:
            value = probe()
        except ignore as e:
            last = e
        else:
            last = value
            if until(value):
                return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _failure(what, timeout, last, show, detail)
        time.sleep(min(interval, left))
