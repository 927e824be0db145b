"""Reading an :class:`~shoal.mesh.upstream.UpstreamResponse`'s body in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from shoal.mesh.upstream import UpstreamResponse


async def pieces(response: UpstreamResponse) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive."""
    while (piece := await response.piece()) is not None:
        yield piece


async def read_body(response: UpstreamResponse) -> bytes:
    """Every byte of the body."""
    return b"".join([piece async for piece in pieces(response)])
