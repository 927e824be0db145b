"""The retry buffer: a streamed body read once, sent again from its start while it fits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal.mesh.replay import Replay
from tests.support.wait import eventually


class Source:
    """A caller's body whose pieces the test releases one by one (None ends it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self.taken = 0

    async def body(self) -> AsyncIterator[bytes]:
        while (piece := await self.queue.get()) is not None:
            if isinstance(piece, Exception):
                raise piece
            self.taken += 1
            yield piece


async def take(body: AsyncIterator[bytes], count: int) -> list[bytes]:
    return [await anext(body) for _ in range(count)]


async def test_a_try_cut_midway_is_made_again_from_the_first_byte() -> None:
    """The first try takes two pieces and is cancelled while waiting for more (its reader is
    closed, not the caller's body); the next try gets those two again, then the rest."""
    source = Source()
    replay = Replay(source.body(), limit=100)
    for piece in (b"ab", b"cd"):
        source.queue.put_nowait(piece)
    first = replay.body()
    took_two = asyncio.Event()
    got: list[bytes] = []

    async def first_try() -> None:
        async for piece in first:
            got.append(piece)
            if len(got) == 2:
                took_two.set()  # it goes on to wait for a third piece before this task yields

    trying = asyncio.create_task(first_try())
    await took_two.wait()
    assert got == [b"ab", b"cd"]
    trying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trying
    assert replay.replayable
    second = replay.body()
    source.queue.put_nowait(b"ef")
    source.queue.put_nowait(None)
    assert [piece async for piece in second] == [b"ab", b"cd", b"ef"]
    replay.close()


async def test_past_the_limit_nothing_is_kept_and_no_try_starts_over() -> None:
    source = Source()
    replay = Replay(source.body(), limit=5)
    body = replay.body()
    for piece in (b"abc", b"def", b"ghi"):
        source.queue.put_nowait(piece)
    source.queue.put_nowait(None)
    assert [piece async for piece in body] == [b"abc", b"def", b"ghi"]
    assert not replay.replayable
    assert replay._pieces == []  # what was sent is dropped
    replay.close()


async def test_the_source_is_read_ahead_by_the_limit_at_most() -> None:
    """With a try that takes nothing, the source is read only until more than ``limit`` bytes
    wait unsent."""
    source = Source()
    replay = Replay(source.body(), limit=4)
    body = replay.body()
    for piece in (b"ab", b"cd", b"ef", b"gh"):
        source.queue.put_nowait(piece)
    # Unbounded, it would take all four in one go (the queue never makes it wait).
    await eventually(lambda: source.taken, "the source read", until=lambda n: n >= 3)
    assert source.taken == 3  # 6 bytes unsent > 4: it waits
    assert await take(body, 3) == [b"ab", b"cd", b"ef"]
    replay.close()


async def test_a_failing_source_fails_the_try() -> None:
    source = Source()
    replay = Replay(source.body(), limit=100)
    source.queue.put_nowait(b"ab")
    source.queue.put_nowait(ValueError("refused at the edge"))
    body = replay.body()
    assert await anext(body) == b"ab"
    with pytest.raises(ValueError, match="refused at the edge"):
        await anext(body)
    replay.close()
