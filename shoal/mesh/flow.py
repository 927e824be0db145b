"""Write backpressure for the HTTP core's protocols: wait while the transport's buffer is full.

asyncio calls :meth:`pause_writing` when a transport's write buffer passes its high-water mark
and :meth:`resume_writing` below the low one; a writer awaits :meth:`writable` after each write,
so a slow peer slows the writer instead of growing the buffer. A lost connection must call
:meth:`release_writers`, or a writer would wait forever.
"""

from __future__ import annotations

import asyncio

# Unread body bytes a connection holds for the other side before it stops reading (and below
# which it reads again): a slow peer never makes a proxy buffer a whole body.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class WriteFlow(asyncio.Protocol):
    """An asyncio Protocol whose writers can wait for the transport to take more."""

    _drained: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.release_writers()
        self._drained = None

    def release_writers(self) -> None:
        """Wake whoever waits in :meth:`writable` (the buffer drained, or the connection is
        gone)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def writable(self) -> None:
        """Return once the transport takes more (at once unless it paused writing)."""
        if self._drained is not None:
            await self._drained
