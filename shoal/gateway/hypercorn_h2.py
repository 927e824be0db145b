"""hypercorn 0.18.0's HTTP/2 protocol hardened for the edge (see :mod:`.hypercorn_edge` for why
the edge reaches into hypercorn, the pin, and :func:`~.hypercorn_edge.install`).

:class:`EdgeH2Protocol`: :class:`~shoal.gateway.flood.FloodGuard` → GOAWAY ENHANCE_YOUR_CALM (also
for streams the client makes the server reset, and WINDOW_UPDATE floods), then a lingering close
so the GOAWAY arrives; late DATA → RST_STREAM NO_ERROR; a ``:path`` outside visible ASCII → 400
on its stream; GOAWAY on idle close and after ``idle_timeout`` with the client's flow-control
window shut; a small response in one write; every request stream (a WebSocket's too: RFC 8441
extended CONNECT) is an :class:`~.h2_stream.H2Stream` served by the edge's handler instead of
hypercorn's ASGI stream, its DATA credit given back as the handler takes it; any other CONNECT →
501 on its stream.
It behaves exactly like hypercorn's unless the ``Config`` is an :class:`EdgeConfig`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Request, Response, Trailers
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from priority.priority import DeadlockError, DuplicateStreamError

from shoal.gateway.flood import FloodGuard, Frame
from shoal.gateway.h2_stream import H2Stream, pseudo_headers, refused_connect
from shoal.gateway.hypercorn_edge import EdgeConfig
from shoal.http.h2_encoding import without_huffman
from shoal.http.refusal import BAD_PATH, NOT_IMPLEMENTED, Refusal

log = logging.getLogger(__name__)

LINGER = 2.0
"""Seconds a connection closed for a flood or a protocol error goes on reading (and dropping)
what the client sends, unless it closes first: closing a socket with unread input makes the
kernel send RST, which can destroy the GOAWAY saying why before the client reads it (nginx's
lingering close)."""

_PING_EVENTS = (h2.events.PingReceived, h2.events.PingAckReceived)
_SETTINGS_EVENTS = (h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged)
_OTHER_EVENTS = (h2.events.PriorityUpdated, h2.events.UnknownFrameReceived)
_VISIBLE = re.compile(rb"[!-~]*")  # visible ASCII: what a request target may hold
BAD_PATH_REFUSAL = Refusal(400, BAD_PATH, "the request target must be visible ASCII")
CONNECT_REFUSAL = Refusal(501, NOT_IMPLEMENTED, "CONNECT opens only a WebSocket here")


def _visible_path(headers: list[tuple[bytes, bytes]]) -> bool:
    return all(_VISIBLE.fullmatch(v) for n, v in headers if n == b":path")


class EdgeH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol with flood detection and graceful handling of late DATA."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        config = self.config
        self._guard: FloodGuard | None = None
        self._goaway_sent = False
        # Since when a response has waited for the client to open its flow-control window
        # (None: the last turn sent something, or nothing waits on the client).
        self._starved_since: float | None = None
        self._lingering: asyncio.Task[None] | None = None  # closing after a flood
        if isinstance(config, EdgeConfig):
            self._guard = FloodGuard(config.limits, time.monotonic())
            # hypercorn advertises h2_max_header_list_size as an initial value, so h2 never sees
            # it acknowledged and its HPACK decoder keeps enforcing 64 KiB; enforce what we say.
            self.connection.decoder.max_header_list_size = config.h2_max_header_list_size
            without_huffman(self.connection)

    async def handle(self, event: Event) -> None:
        """As hypercorn, but a connection the server closes says GOAWAY first, and one closed
        for a flood or a protocol error lingers (:data:`LINGER`)."""
        if self._lingering is not None:
            if isinstance(event, RawData):
                return  # dropped: the connection is closing
            self._lingering.cancel()
            self._lingering = None
        if self._guard is not None and isinstance(event, RawData):
            try:
                events = self.connection.receive_data(event.data)
            except h2.exceptions.ProtocolError:  # h2 has framed a GOAWAY saying why
                self._goaway_sent = True
                await self._flush()
                self._linger()
                return
            await self._handle_events(events)
            return
        if self._guard is not None and isinstance(event, Closed) and not self._goaway_sent:
            self._goaway_sent = True
            try:
                self.connection.close_connection()
                await self._flush()
            except (h2.exceptions.ProtocolError, ConnectionError, RuntimeError):
                pass  # the connection is already finished one way or another
        await super().handle(event)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        guard = self._guard
        if guard is None:
            await super()._handle_events(events)
            return
        now = time.monotonic()
        kept: list[h2.events.Event] = []
        opened: set[int] = set()  # streams this batch opens: hypercorn has not seen them yet
        with_headers: h2.events.PriorityUpdated | None = None
        for event in events:
            frame: Frame | None = None
            if isinstance(event, h2.events.DataReceived | h2.events.StreamEnded) and not (
                event.stream_id in self.streams or event.stream_id in opened
            ):
                if isinstance(event, h2.events.DataReceived):
                    self._refuse_late_data(event)
                continue
            if isinstance(event, h2.events.DataReceived):
                empty = not event.data and event.stream_ended is None
                frame = Frame.EMPTY_DATA if empty else Frame.DATA
            elif isinstance(event, h2.events.RequestReceived):
                frame = Frame.HEADERS
                with_headers = event.priority_updated
            elif isinstance(event, _PING_EVENTS):
                frame = Frame.PING
            elif isinstance(event, _SETTINGS_EVENTS):
                frame = Frame.SETTINGS
            elif isinstance(event, h2.events.WindowUpdated):
                frame = Frame.WINDOW_UPDATE
            elif isinstance(event, h2.events.StreamReset):
                # Sent by the client, or by h2 because of what the client sent (DATA on a
                # stream it had ended: MadeYouReset, CVE-2025-8671): either way a stream
                # that no longer counts against the client's concurrency.
                frame = Frame.RESET
            elif isinstance(event, _OTHER_EVENTS) and event is not with_headers:
                frame = Frame.PRIORITY
            if frame is not None:
                reason = guard.on_frame(frame, now)
                if reason is not None:
                    await self._calm_down(reason)
                    return
            if isinstance(event, h2.events.RequestReceived):
                if not _visible_path(event.headers):
                    # hypercorn would fail decoding it (a traceback, the connection dropped)
                    self._refuse_stream(event.stream_id, BAD_PATH_REFUSAL)
                    continue  # the stream's DATA, if any, is refused as late data
                opened.add(event.stream_id)
            kept.append(event)
        await self._dispatch(kept)

    async def _dispatch(self, events: list[h2.events.Event]) -> None:
        """hypercorn's handling of ``events``, in order, except that DATA is looked up as it
        comes (hypercorn fails on DATA for a stream that ended while the batch was handled:
        an answer may be complete before the rest of the batch) and an :class:`H2Stream`'s is
        given to it here, its credit going back only once its handler takes it."""
        run: list[h2.events.Event] = []
        for event in events:
            if not isinstance(event, h2.events.DataReceived):
                run.append(event)  # (a stream's end, too: hypercorn skips a stream gone)
                continue
            if run:
                await super()._handle_events(run)
                run = []
            stream = self.streams.get(event.stream_id)
            if isinstance(stream, H2Stream):
                stream.received(event.data, event.flow_controlled_length)
            elif stream is None:
                self._refuse_late_data(event)
            else:
                await super()._handle_events([event])
        await super()._handle_events(run)

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        """As hypercorn, but the stream is an :class:`H2Stream` served by the edge's handler,
        not hypercorn's ASGI stream."""
        config = self.config
        if not isinstance(config, EdgeConfig) or config.h2 is None or config.h1 is None:
            await super()._create_stream(request)
            return
        stream_id = request.stream_id
        pseudo = pseudo_headers(request.headers)
        if refused_connect(pseudo):
            self._refuse_stream(stream_id, CONNECT_REFUSAL)  # hypercorn never sees it: its
            return  # DATA, if any, is refused as late data
        event = Request(
            stream_id=stream_id,
            headers=request.headers,
            http_version="2",
            method="",  # (read from the headers by the stream)
            raw_path=b"",
            state=self.connection_state,
        )
        ended = request.stream_ended is not None
        stream = H2Stream(self, event, pseudo, ended, config.h2, config.h1)
        self.streams[stream_id] = stream  # type: ignore[assignment]
        self.stream_buffers[stream_id] = StreamBuffer(self.context.event_class)
        try:
            self.priority.insert_stream(stream_id)
        except DuplicateStreamError:
            pass  # a PRIORITY frame came before the HEADERS
        else:
            self.priority.block(stream_id)
        await stream.handle(event)
        self.keep_alive_requests += 1
        await self.context.mark_request()

    async def flush(self) -> None:
        """Write out what h2 has framed (a stream's WINDOW_UPDATE, say)."""
        await self._flush()

    async def reset(self, stream_id: int) -> None:
        """Reset a stream whose answer cannot end whole, and forget what it had to send."""
        try:
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass  # already closed
        await self._forget(stream_id)
        await self._flush()

    async def _forget(self, stream_id: int) -> None:
        """Drop what hypercorn keeps to send on a stream that sends no more."""
        buffer = self.stream_buffers.pop(stream_id, None)
        if buffer is not None:
            await buffer.close()
            self.priority.remove_stream(stream_id)

    def _refuse_stream(self, stream_id: int, refusal: Refusal) -> None:
        """Answer a stream hypercorn never sees with ``refusal``."""
        body = refusal.body()
        headers = [
            (b":status", b"%d" % refusal.status),
            *refusal.headers,
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        try:
            self.connection.send_headers(stream_id, headers)
            self.connection.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass  # the stream closed meanwhile

    async def stream_send(self, event: StreamEvent) -> None:
        """As hypercorn, but response headers wait in h2's buffer for the sender (below),
        which writes them with the body that usually follows at once: one write per small
        response instead of three (HEADERS, DATA, an empty END_STREAM DATA)."""
        if self._guard is None or type(event) is not Response:
            await super().stream_send(event)
            if self._guard is not None and type(event) is Trailers:
                await self._forget(event.stream_id)  # (hypercorn keeps its buffer forever)
            return
        try:
            self.connection.send_headers(
                event.stream_id,
                [
                    (b":status", b"%d" % event.status_code),
                    *event.headers,
                    *self.config.response_headers("h2"),
                ],
            )
        except (KeyError, h2.exceptions.ProtocolError):
            return  # the stream or the connection closed meanwhile
        await self.has_data.set()

    async def send_task(self) -> None:
        """hypercorn's sender, writing out what is framed whenever it runs out of data to
        send (so headers of a response without a body yet, e.g. an event stream, leave at
        once)."""
        if self._guard is None:
            await super().send_task()
            return
        while not self.closed:
            try:
                stream_id = next(self.priority)
            except DeadlockError:
                await self._flush()
                if not await self._wait_unless_starved():
                    return
                await self.has_data.clear()
            else:
                await self._send_data(stream_id)

    async def _wait_unless_starved(self) -> bool:
        """Wait for something to send. A client that keeps its flow-control window shut while
        a response waits (a zero-window reader holds the connection and the response's memory
        forever) gets ``idle_timeout``, then GOAWAY and the connection closes: False."""
        if self._starved_since is None:
            await self.has_data.wait()
            return True
        assert isinstance(self.config, EdgeConfig)
        try:
            async with asyncio.timeout_at(self._starved_since + self.config.limits.idle_timeout):
                await self.has_data.wait()
            return True
        except TimeoutError:
            log.info("closing HTTP/2 connection from %s: window shut", self.client)
            self._goaway_sent = True
            self.connection.close_connection(additional_data=b"flow-control window shut")
            await self._flush()
            await self.send(Closed())
            return False

    async def _send_data(self, stream_id: int) -> None:
        """hypercorn's, except that the last piece of a body carries END_STREAM itself, and
        a stream's turn is one write."""
        if self._guard is None:
            await super()._send_data(stream_id)
            return
        try:
            buffer = self.stream_buffers[stream_id]
            window = self.connection.local_flow_control_window(stream_id)
            data = await buffer.pop(max(0, min(window, self.connection.max_outbound_frame_size)))
            end = buffer.complete
            if data:
                self.connection.send_data(stream_id, data, end_stream=end)
                self._guard.data_sent()
                self._starved_since = None
            elif end:
                self.connection.end_stream(stream_id)
            else:
                self.priority.block(stream_id)
                if window == 0 and buffer.buffer and self._starved_since is None:
                    self._starved_since = asyncio.get_running_loop().time()
            await self._flush()
            if end:
                del self.stream_buffers[stream_id]
                self.priority.remove_stream(stream_id)
        except (h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError):
            # As hypercorn: the stream or connection closed while this waited.
            await self.stream_buffers[stream_id].close()
            del self.stream_buffers[stream_id]
            self.priority.remove_stream(stream_id)

    async def _close_stream(self, stream_id: int) -> None:
        self._starved_since = None  # re-armed by the next stream found waiting on the window
        await super()._close_stream(stream_id)

    def _refuse_late_data(self, event: h2.events.DataReceived) -> None:
        """DATA for a stream already answered: credit the window, ask the client to stop."""
        self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if event.stream_ended is None:
            try:
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass  # already closed on both sides

    async def _calm_down(self, reason: str) -> None:
        log.warning("closing HTTP/2 connection from %s: %s", self.client, reason)
        self._goaway_sent = True
        self.connection.close_connection(
            error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=reason.encode()
        )
        await self._flush()
        self._linger()

    def _linger(self) -> None:
        """Close after :data:`LINGER` unless the client closes first; drop what it sends."""
        self._lingering = asyncio.get_running_loop().create_task(self._close_after(LINGER))

    async def _close_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # a timer: the client did not close in time
        self._lingering = None
        await self.send(Closed())
