"""TaskScope and until_stopped: owned tasks end with their block, and their failures are heard."""

from __future__ import annotations

import asyncio

import pytest

from shoal.errors import PlatformError
from shoal.mesh.tasks import TaskScope, until_stopped


async def forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


async def fail_after(started: asyncio.Event) -> None:
    await started.wait()
    raise PlatformError("cannot bind")


async def test_leaving_the_block_cancels_and_awaits_its_tasks() -> None:
    """A task still running when the block ends is cancelled and has ended when it exits."""
    started = asyncio.Event()
    async with asyncio.timeout(5):
        async with TaskScope() as scope:
            task = scope.start(forever(started))
            await started.wait()
    assert task.cancelled()


async def test_a_failing_task_ends_the_block_with_its_own_error() -> None:
    """A task's error cancels the block and is raised as itself, not in an ExceptionGroup."""
    started = asyncio.Event()
    body_cancelled = False
    async with asyncio.timeout(5):
        with pytest.raises(PlatformError, match="cannot bind"):
            async with TaskScope() as scope:
                other = scope.start(forever(asyncio.Event()))
                scope.start(fail_after(started))
                started.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
    assert body_cancelled and other.cancelled()
    me = asyncio.current_task()
    assert me is not None and me.cancelling() == 0  # the scope took back the cancel it asked


async def test_the_blocks_error_propagates_unchanged() -> None:
    """An error raised by the block itself comes out as it is, after the tasks have ended."""
    started = asyncio.Event()
    async with asyncio.timeout(5):
        with pytest.raises(KeyError):
            async with TaskScope() as scope:
                task = scope.start(forever(started))
                await started.wait()
                raise KeyError("body")
    assert task.cancelled()


async def test_an_outside_cancellation_propagates() -> None:
    """Cancelling the owner cancels the block and the tasks; the owner ends cancelled."""
    started = asyncio.Event()
    inner: list[asyncio.Task[None]] = []

    async def owner() -> None:
        async with TaskScope() as scope:
            inner.append(scope.start(forever(started)))
            await asyncio.Event().wait()

    task = asyncio.create_task(owner())
    async with asyncio.timeout(5):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert inner[0].cancelled()


async def test_until_stopped_returns_the_result_or_none_on_stop() -> None:
    """The work's result when it finishes first; None (work cancelled) when stop comes first."""
    stop = asyncio.Event()

    async def quick() -> int:
        return 7

    started = asyncio.Event()

    async def slow() -> int:
        await forever(started)
        return 0

    async with asyncio.timeout(5):
        assert await until_stopped(quick(), stop) == 7
        waiting = asyncio.create_task(until_stopped(slow(), stop))
        await started.wait()
        stop.set()
        assert await waiting is None


async def test_until_stopped_raises_the_works_error() -> None:
    """An error of the work is raised as it is."""
    started = asyncio.Event()
    started.set()
    async with asyncio.timeout(5):
        with pytest.raises(PlatformError):
            await until_stopped(fail_after(started), asyncio.Event())
