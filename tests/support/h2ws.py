"""A WebSocket client over HTTP/2 (RFC 8441 extended CONNECT), as browsers open one on an HTTP/2
connection whose server said SETTINGS_ENABLE_CONNECT_PROTOCOL: ``h2`` frames the stream,
``wsproto`` the WebSocket frames inside it (no stock Python client speaks RFC 8441, and neither
curl nor nghttp does)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
from wsproto.frame_protocol import FrameProtocol, Opcode

Headers = list[tuple[bytes, bytes]]


class Refused(Exception):
    """The server answered the CONNECT with something other than 200."""

    def __init__(self, status: int, headers: Headers) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


@dataclass
class H2WebSocket:
    """One WebSocket on its own HTTP/2 connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection
    headers: Headers = field(default_factory=list)  # the answer to the CONNECT
    settings: dict[int, int] = field(default_factory=dict)  # the server's
    sid: int = 1
    frames: FrameProtocol = field(default_factory=lambda: FrameProtocol(True, []))
    messages: asyncio.Queue[tuple[str, object]] = field(default_factory=asyncio.Queue)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the server ended the stream
    reset: int | None = None  # the error code of a RST_STREAM from the server
    _partial: list[bytes | str] = field(default_factory=list)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)
    _window: asyncio.Event = field(default_factory=asyncio.Event)  # a WINDOW_UPDATE came
    status: int = 0

    def _flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                self._on(event)
            self._flush()
        self.ended.set()
        self._answered.set()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            self._answered.set()
        elif isinstance(event, h2.events.ResponseReceived):
            self.headers = list(event.headers)
            self.status = int(dict(self.headers)[b":status"])
            self._answered.set()
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.frames.receive_bytes(event.data)
            for frame in self.frames.received_frames():
                self._frame(frame.opcode, frame.payload, frame.message_finished)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            self.reset = event.error_code
            self.ended.set()
            self._answered.set()

    def _frame(self, opcode: Opcode, payload: object, finished: bool) -> None:
        if opcode is Opcode.CLOSE:
            code, _reason = payload  # type: ignore[misc]
            self.messages.put_nowait(("close", int(code)))
        elif opcode is Opcode.PONG:
            self.messages.put_nowait(("pong", bytes(payload)))  # type: ignore[call-overload]
        elif opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
            self._partial.append(payload)  # type: ignore[arg-type]
            if finished:
                pieces, self._partial = self._partial, []
                joined: object = (
                    "".join(pieces)  # type: ignore[arg-type]
                    if isinstance(pieces[0], str)
                    else b"".join(pieces)  # type: ignore[arg-type]
                )
                self.messages.put_nowait(("text" if isinstance(joined, str) else "bytes", joined))

    async def _send(self, data: bytes | bytearray, end: bool = False) -> None:
        """Send ``data`` as DATA frames within the server's flow-control windows."""
        view = memoryview(bytes(data))
        while True:
            size = min(
                len(view),
                self.conn.local_flow_control_window(self.sid),
                self.conn.max_outbound_frame_size,
            )
            if size == 0 and view:
                self._window.clear()
                async with asyncio.timeout(5):
                    await self._window.wait()
                continue
            last = size == len(view)
            self.conn.send_data(self.sid, bytes(view[:size]), end_stream=end and last)
            self._flush()
            await self.writer.drain()
            view = view[size:]
            if last:
                return

    async def send(self, message: str | bytes) -> None:
        await self._send(self.frames.send_data(message))

    async def ping(self, payload: bytes) -> None:
        await self._send(self.frames.ping(payload))

    async def recv(self, timeout: float = 5.0) -> tuple[str, object]:
        """The next message: ``("text", str)``, ``("bytes", bytes)``, ``("pong", payload)``
        or ``("close", code)``."""
        async with asyncio.timeout(timeout):
            return await self.messages.get()

    async def close(self, code: int = 1000) -> int:
        """Say goodbye, end the stream; the server's close code."""
        await self._send(self.frames.close(code), end=True)
        kind, value = await self.recv()
        assert kind == "close", (kind, value)
        return int(value)  # type: ignore[call-overload]


@contextlib.asynccontextmanager
async def h2_websocket(
    port: int,
    authority: str,
    path: str = "/",
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[H2WebSocket]:
    """Open a WebSocket to ``authority`` over HTTP/2 on 127.0.0.1:``port`` (TLS with ALPN h2 when
    ``context`` is given, else h2c with prior knowledge); :class:`Refused` if not 200."""
    if context is not None:
        context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname if context else None
    )
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    ws = H2WebSocket(reader, writer, conn)
    ws._flush()
    reading = asyncio.create_task(ws._read())
    try:
        async with asyncio.timeout(5):
            await ws._answered.wait()  # the server's SETTINGS come first
        if ws.settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) != 1:
            raise ConnectionError(f"the server does not take extended CONNECT: {ws.settings}")
        ws._answered.clear()
        scheme = b"https" if context else b"http"
        conn.send_headers(
            ws.sid,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", scheme),
                (b":path", path.encode()),
                (b":authority", authority.encode()),
                (b"sec-websocket-version", b"13"),
            ],
        )
        ws._flush()
        async with asyncio.timeout(5):
            await ws._answered.wait()
        if ws.status != 200:
            raise Refused(ws.status, ws.headers)
        yield ws
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
