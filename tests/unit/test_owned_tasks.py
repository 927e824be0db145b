"""Owned background tasks: a lone failure in a task group surfaces as itself; an owned set
logs each failure as it happens and is cancelled or awaited whole."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shoal.errors import StoreError
from shoal.mesh.tasks import OwnedTasks, task_group


async def fail(error: Exception) -> None:
    """Raise ``error`` on the next turn of the loop."""
    await asyncio.sleep(0)
    raise error


async def test_a_lone_failure_is_raised_unwrapped() -> None:
    """One failing task ends the group with its own error, not an ExceptionGroup."""
    with pytest.raises(StoreError, match="gone"):
        async with task_group() as group:
            group.create_task(fail(StoreError("gone")))
            await asyncio.Event().wait()  # cancelled by the group when the task fails


async def test_a_failing_body_is_raised_unwrapped_and_ends_the_tasks() -> None:
    """An error in the block itself is raised as itself, and the group's tasks are cancelled."""
    forever = asyncio.Event()
    with pytest.raises(StoreError, match="body"):
        async with task_group() as group:
            task = group.create_task(forever.wait())
            raise StoreError("body")
    assert task.cancelled()


async def test_several_failures_stay_grouped() -> None:
    """Two tasks failing together are both reported, in an ExceptionGroup."""
    with pytest.raises(ExceptionGroup) as raised:
        async with task_group() as group:
            group.create_task(fail(StoreError("one")))
            group.create_task(fail(ValueError("two")))
    assert sorted(str(e) for e in raised.value.exceptions) == ["one", "two"]


async def test_owned_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A failing owned task is logged with its owner and name; its siblings go on."""
    tasks = OwnedTasks("agent n1")
    sibling = tasks.spawn(asyncio.Event().wait(), name="sibling")
    with caplog.at_level(logging.ERROR, logger="shoal.platform.tasks"):
        failing = tasks.spawn(fail(ValueError("boom")), name="run hello/v1 i1")
        await asyncio.wait([failing])
    assert "agent n1: task run hello/v1 i1 failed" in caplog.text
    assert not sibling.done()
    assert len(tasks) == 1
    await tasks.cancel()
    assert sibling.cancelled()
    assert len(tasks) == 0


async def test_join_waits_for_tasks_spawned_meanwhile() -> None:
    """``join`` returns only once every task has ended, including ones started by a task."""
    tasks = OwnedTasks("test")
    order: list[str] = []

    async def second() -> None:
        await asyncio.sleep(0)
        order.append("second")

    async def first() -> None:
        tasks.spawn(second(), name="second")
        order.append("first")

    tasks.spawn(first(), name="first")
    await tasks.join()
    assert order == ["first", "second"]
    assert len(tasks) == 0
