"""Background tasks with an owner: a task group for a block, a set for other lifetimes.

Where a task lives exactly as long as a block, its owner is an :class:`asyncio.TaskGroup`,
entered through :func:`task_group` (the controller's and the agent's watchers, a drill's
traffic). Some lifetimes do not fit a block: the CA signs
while its controller leads, which starts and ends between ticks; an agent runs each instance
slot from the reconcile that starts it to the drain that ends it. :class:`OwnedTasks` owns
those: its owner cancels or awaits every task before it stops itself, and a task that fails is
logged the moment it fails, never dropped unseen (a TaskGroup would instead end its siblings,
and one broken slot must not take a node's other instances down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger(__name__)


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` that raises a lone failure as itself.

    A TaskGroup wraps every failure, even one, in an ExceptionGroup; callers up to the CLI
    catch :class:`~shoal.errors.ShoalError` to print one line, so a single error (the usual
    case) is raised unwrapped. Several at once stay grouped: none of them is dropped.
    """
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as e:
        if len(e.exceptions) == 1:
            raise e.exceptions[0] from None
        raise


class OwnedTasks:
    """A set of background tasks that ``owner`` (named in the log) cancels or awaits."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this set."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio does not report it again
        if error is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=error)

    async def join(self) -> None:
        """Wait until every task has ended, those spawned meanwhile included."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended."""
        while self._tasks:
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
