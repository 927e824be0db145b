"""Owned background tasks: every task has an owner that cancels or awaits it.

Three owners, by the task's lifetime:

- :class:`TaskScope` — tasks that run as long as a block and are cancelled when it ends (a proxy
  process's certificate renewal, config follower and ack loop);
- :func:`task_group` — an :class:`asyncio.TaskGroup` whose block waits for its tasks (the
  controller's and the agent's watchers, a drill's traffic);
- :class:`OwnedTasks` — lifetimes that fit no block: the CA signs while its controller leads,
  which starts and ends between ticks; an agent runs each instance slot from the reconcile that
  starts it to the drain that ends it. Its owner cancels or awaits every task before it stops,
  and a task that fails is logged the moment it fails (a TaskGroup would instead end its
  siblings, and one broken slot must not take a node's other instances down).

About :class:`TaskScope`:

Every long-lived task of a proxy process (certificate renewal, the config follower, the ack
loop) belongs to a :class:`TaskScope`, so none outlives its owner and none fails unheard:

- leaving the ``async with`` block, normally or by an exception, cancels the scope's tasks and
  waits for them to end;
- a task that fails cancels the block and the scope raises that task's error (as
  ``asyncio.TaskGroup`` does: the owner hears it at once, not at shutdown);
- an error raised by the block itself propagates unchanged.

Unlike a bare ``TaskGroup``, the scope does not wrap errors in an ``ExceptionGroup`` when there
is only one: a ``ShoalError`` from a task or from the block (a port that cannot be bound)
reaches the CLI as itself, which prints it as one line instead of a traceback. The tasks are
meant to run until cancelled; one that returns simply ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskScope:
    """An ``asyncio.TaskGroup`` whose tasks are cancelled when its block ends; see the module
    docstring."""

    __slots__ = ("_group", "_tasks")

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> TaskScope:
        await self._group.__aenter__()
        return self

    def start(self, work: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``work`` in a task the scope owns."""
        task = self._group.create_task(work, name=name)
        self._tasks.append(task)
        return task

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if kind is None or issubclass(kind, asyncio.CancelledError):
                # The group tells a cancellation it asked for (a task failed) from one from
                # outside, which must propagate.
                await self._group.__aexit__(kind, error, tb)
            else:
                # The block's own error: the group only has to wait for its tasks, and the
                # error propagates as it is once this returns.
                await self._group.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            raise _single(group) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (nested) groups of one, else the group itself."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return found


async def until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None if ``stop`` is set first (``work`` is then cancelled).

    An error of ``work`` is raised as it is.
    """
    async with TaskScope() as scope:
        working = scope.start(work)
        stopping = scope.start(stop.wait())
        await asyncio.wait([working, stopping], return_when=asyncio.FIRST_COMPLETED)
    if working.cancelled():
        return None
    return working.result()


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
        raise _single(e) from None


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


async def finish(tasks: Iterable[asyncio.Task[Any]], grace: float) -> None:
    """Let ``tasks`` finish for ``grace`` seconds, then cancel the late ones and await them."""
    running = list(tasks)
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=grace)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
