"""Owned background tasks: a TaskGroup that lives as long as a block of code.

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
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

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
