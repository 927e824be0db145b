"""A streamed request body kept as it goes out, so that a failed try can send it again: Envoy's
retry buffer.

A body whose length is unknown when the request is forwarded (HTTP/1.1 chunked, HTTP/2 without
``content-length`` — every gRPC call) cannot be read whole before the first try: a streaming
call's client may wait for an answer before it sends more. So :class:`Replay` streams it and
keeps what passed, up to ``limit`` bytes: each try reads it from the start, then what arrives
next, and the body stays :attr:`~Replay.replayable` while everything that passed fits. Past the
limit the kept bytes are dropped once sent and no retry happens (as in Envoy).

One task reads the caller's body into the buffer: the caller's body is an async generator,
which a try's cancelled reader would otherwise close for good. It reads ahead of the try being
sent by ``limit`` bytes at most, and is stopped by :meth:`Replay.close` (the exchange is over).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["Replay"]


class Replay:
    """``source`` read once, tried any number of times while it fits ``limit``."""

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._pieces: list[bytes] = []  # kept, from piece number _base on
        self._base = 0
        self._size = 0  # bytes read from the source so far
        self._sent = 0  # pieces the latest try has taken
        self._sent_bytes = 0
        self._ended = False
        self._error: BaseException | None = None
        self._changed: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def replayable(self) -> bool:
        """Whether every byte that passed is still kept: a new try may start over."""
        return self._size <= self._limit

    def body(self) -> AsyncIterator[bytes]:
        """The body for one try, from its first byte."""
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._read_source())
        return self._read(self._base if not self.replayable else 0)

    def close(self) -> None:
        """The exchange is over: stop reading the source."""
        if self._pump is not None:
            self._pump.cancel()

    async def _read_source(self) -> None:
        try:
            async for piece in self._source:
                self._pieces.append(piece)
                self._size += len(piece)
                self._wake()
                while self._size - self._sent_bytes > self._limit:
                    await self._wait()  # the try being sent is behind: hold the source back
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the caller's body failed (refused at the edge…)
            self._error = e
        finally:
            self._ended = True
            self._wake()

    async def _read(self, start: int) -> AsyncIterator[bytes]:
        index = start
        self._sent, self._sent_bytes = start, 0
        while True:
            if index < self._base:
                raise RuntimeError("a try reread a body that was not kept")
            if index < self._base + len(self._pieces):
                piece = self._pieces[index - self._base]
                index += 1
                self._sent, self._sent_bytes = index, self._sent_bytes + len(piece)
                if not self.replayable:  # no try will start over: keep nothing sent
                    del self._pieces[: index - self._base]
                    self._base = index
                self._wake()
                yield piece
            elif self._ended:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
