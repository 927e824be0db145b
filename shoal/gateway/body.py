"""The request body as the gateway forwards it: bounded in size and in time.

hypercorn delivers the body as ASGI ``http.request`` messages with no deadline and no size limit
(``read_timeout`` only bounds one read, so one byte every minute keeps a request alive). The
gateway reads it through :class:`RequestBody`, which the upstream client consumes as it sends:

- more than ``max_body_bytes`` (possible only for a chunked or HTTP/2 body) → 413;
- no piece for ``body_idle_timeout``, or not finished ``body_timeout`` after the head → 408;
- the client gone mid-body → the body fails too.

Failing means raising :class:`BodyRefused` *before* yielding the piece that crossed the limit,
so the upstream request is aborted and the upstream never sees a complete request; the
:class:`~shoal.http.refusal.Refusal` stays on :attr:`RequestBody.refusal` for the app
to answer with, whichever way the failure surfaces from the forwarder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from shoal.errors import ShoalError
from shoal.http.limits import EdgeLimits
from shoal.http.refusal import BODY_TOO_LARGE, CLIENT_CLOSED, REQUEST_TIMEOUT, Refusal

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BodyRefused(ShoalError):
    """The client's request body broke a limit (or the client left); carries the answer."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class RequestBody:
    """An ASGI request body as an async iterator of chunks, within the edge's limits."""

    __slots__ = ("_deadline", "_idle", "_max", "_receive", "received", "refusal")

    def __init__(self, receive: Receive, limits: EdgeLimits, started: float) -> None:
        """``started`` is the event-loop time the head arrived (the body deadline counts from)."""
        self._receive = receive
        self._max = limits.max_body_bytes
        self._idle = limits.body_idle_timeout
        self._deadline = started + limits.body_timeout
        self.refusal: Refusal | None = None
        self.received = 0

    def _fail(self, refusal: Refusal) -> BodyRefused:
        self.refusal = refusal
        return BodyRefused(refusal)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive; raises :class:`BodyRefused` on a broken limit."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(min(loop.time() + self._idle, self._deadline)):
                    message = await self._receive()
            except TimeoutError:
                raise self._fail(
                    Refusal(408, REQUEST_TIMEOUT, "request body not received in time")
                ) from None
            if message["type"] == "http.disconnect":
                raise self._fail(Refusal(400, CLIENT_CLOSED, "client left mid-body"))
            chunk: bytes = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                if self.received > self._max:
                    raise self._fail(
                        Refusal(413, BODY_TOO_LARGE, f"request body over {self._max} bytes")
                    )
                yield chunk
            if not message.get("more_body", False):
                return
