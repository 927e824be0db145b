"""An instance's process as its slot holds it, however it was started.

:class:`Started` is what a slot needs of a process: its pid (which is also its process group,
since it leads its own session), whether it still runs, a way to await its exit and to stop
watching it. :class:`Spawned` is a fresh interpreter or command, the agent's own child, which
asyncio reaps; :class:`Forked` is a process a template forked, not the agent's child, so its exit
is watched through a pidfd.
"""

from __future__ import annotations

import asyncio
import os
import select
from typing import Protocol

__all__ = ["Forked", "Spawned", "Started"]


class Started(Protocol):
    """An instance process, however it was started: what a slot needs of it."""

    @property
    def pid(self) -> int:
        """Its pid, which is also its process group id (it leads its own session)."""
        ...

    @property
    def running(self) -> bool:
        """Not yet exited."""
        ...

    async def wait(self) -> None:
        """Return once it has exited."""
        ...

    @property
    def returncode(self) -> int | None:
        """Its exit status once exited (negative: the signal that ended it), if known."""
        ...

    def close(self) -> None:
        """Release what watches it (once it has exited, or when giving up on it)."""
        ...


class Spawned:
    """A fresh process started by the agent (its child): asyncio waits for it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Not yet exited."""
        return self.process.returncode is None

    async def wait(self) -> None:
        """Return once it has exited."""
        await self.process.wait()

    @property
    def returncode(self) -> int | None:
        """Its exit status once exited (negative: the signal that ended it)."""
        return self.process.returncode

    def close(self) -> None:
        """Nothing to release: asyncio reaps its children."""


class Forked:
    """A process a template forked: not the agent's child, so its exit is watched through a
    pidfd (readable once it has terminated; the template reaps it)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(pidfd, self._on_exit)

    @property
    def pid(self) -> int:
        """The forked process's pid."""
        return self._pid

    @property
    def running(self) -> bool:
        """Not yet exited: asks the pidfd, so a signal is never sent after the exit is known
        to the kernel (the template may have reaped it and the pid may be reused)."""
        if not self._exited.done() and self._pidfd >= 0:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            if poller.poll(0):
                self._on_exit()
        return not self._exited.done()

    def _on_exit(self) -> None:
        self._release()
        if not self._exited.done():
            self._exited.set_result(None)

    def _release(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> None:
        """Return once it has exited."""
        await asyncio.shield(self._exited)

    @property
    def returncode(self) -> int | None:
        """Unknown: the template reaps it, not the agent."""
        return None

    def close(self) -> None:
        """Stop watching; a waiter still waiting is cancelled (the process is not ours now)."""
        self._release()
        self._exited.cancel()
