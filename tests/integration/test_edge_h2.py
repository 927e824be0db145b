"""The hardened edge over HTTP/2 (h2c prior knowledge), frame by frame: the ``h2`` library as the
client on a plain socket, ``hyperframe`` for frames a polite client would not send. Each test
asserts the status or GOAWAY, whether the connection closed, and what the upstream saw; and
no test may leave a traceback in the log (the gateway runs in the test's process)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import (
    DataFrame,
    Frame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from shoal.gateway.h2_edge import LINGER
from shoal.gateway.server import GatewaySettings
from shoal.http.limits import FloodBudget, KiB
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.integration.test_edge_h1 import ROUTES, edge_gateway
from tests.support.backends import echo_backend
from tests.support.gateway import serving
from tests.support.wait import eventually

Headers = Sequence[tuple[bytes, bytes]]


@pytest.fixture(autouse=True)
def no_traceback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client sends, the gateway logs no traceback (hypercorn's, asyncio's, ours).
    The test's upstream (aiohttp) may: a request the gateway cuts off mid-body is an error
    there."""
    yield
    tracebacks = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.get_records("setup") + caplog.get_records("call")
        if (r.exc_info or r.exc_text or "Traceback" in r.getMessage())
        and not r.name.startswith("aiohttp.")
    ]
    assert not tracebacks, tracebacks


def get(path: bytes = b"/", method: bytes = b"GET", *extra: tuple[bytes, bytes]) -> Headers:
    """A request's header block for host ``echo``."""
    return [
        (b":method", method),
        (b":path", path),
        (b":scheme", b"http"),
        (b":authority", b"echo"),
        *extra,
    ]


@dataclass
class Answer:
    """What came back on one stream."""

    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset: h2.errors.ErrorCodes | int | None = None
    data_frames: list[bool] = field(default_factory=list)  # per DATA frame: END_STREAM on it


class H2Wire:
    """One HTTP/2 connection to the gateway, driven by the ``h2`` library."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h2.connection.H2Connection,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.eof = False

    @classmethod
    @contextlib.asynccontextmanager
    async def to(
        cls,
        port: int,
        tls: ssl.SSLContext | None = None,
        window: int | None = None,
        first: Callable[[h2.connection.H2Connection], bytes] | None = None,
    ) -> AsyncIterator[H2Wire]:
        """A connection to ``port`` (over ``tls`` if given) with the client preface sent (and
        ``window`` as its initial flow-control window, if given), closed on exit. ``first``
        frames more to send with the preface, before connecting (a burst framed slowly must
        not meet the gateway's deadline for a connection's first request)."""
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,  # to send what a broken client would
                normalize_outbound_headers=False,
            )
        )
        if window is not None:
            conn.local_settings = h2.settings.Settings(
                client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        conn.initiate_connection()
        burst = conn.data_to_send() + (first(conn) if first else b"")
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        try:
            wire = cls(reader, writer, conn)
            writer.write(burst)
            await wire.flush()
            yield wire
        finally:
            writer.close()

    async def flush(self, *frames: Frame) -> None:
        """Send what the h2 client has queued, then ``frames`` as they are."""
        data = self.conn.data_to_send() + b"".join(f.serialize() for f in frames)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.eof = True

    async def request(self, headers: Headers, body: bytes | None = None, end: bool = True) -> int:
        """Open a stream with ``body``; ``end`` it (the client's half) or leave it open."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, list(headers), end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        await self.flush()
        return sid

    def _absorb(self, events: list[h2.events.Event]) -> None:
        for event in events:
            sid = getattr(event, "stream_id", 0)
            answer = self.answers.setdefault(sid, Answer()) if sid else None
            if isinstance(event, h2.events.ResponseReceived) and answer is not None:
                headers = dict(event.headers)
                answer.status = int(headers.pop(b":status"))
                answer.headers = headers
            elif isinstance(event, h2.events.DataReceived) and answer is not None:
                answer.body += event.data
                answer.data_frames.append(event.stream_ended is not None)
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded) and answer is not None:
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset) and answer is not None:
                answer.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event

    async def read_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read and process frames until ``done()`` or the connection closes."""
        async with asyncio.timeout(timeout):
            while not done() and not self.eof:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    self.eof = True
                    break
                self._absorb(self.conn.receive_data(data))
                await self.flush()

    async def answer(self, sid: int) -> Answer:
        """The complete answer on stream ``sid`` (a response, or a reset)."""
        await self.read_until(
            lambda: (
                sid in self.answers
                and (self.answers[sid].ended or self.answers[sid].reset is not None)
            )
        )
        return self.answers[sid]

    async def closed(self, timeout: float = LINGER + 3.0) -> bool:
        """Whether the gateway closes the connection within ``timeout`` (by default with room
        to spare past its lingering close, which starts when it has read what was sent: a
        loaded machine may read a large write late)."""
        try:
            await self.read_until(lambda: False, timeout)
        except TimeoutError:
            return False
        return self.eof

    async def serves(self) -> bool:
        """Whether the connection still carries a request to the upstream and back."""
        return (await self.answer(await self.request(get(b"/still")))).status == 200


async def test_a_small_answer_is_one_data_frame_with_end_stream(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """The body's last piece carries END_STREAM (no empty DATA frame after it)."""
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        answer = await wire.answer(await wire.request(get(b"/small")))
        assert answer.status == 200 and answer.body
        assert answer.data_frames == [True]


async def test_header_limits_answer_on_the_stream(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Over 100 fields → 431, over 60 KiB → 431, a path over 8 KiB → 414, each on its stream
    while the connection goes on serving; none reaches the upstream."""
    many = get(b"/", b"GET", *((b"x-h%d" % i, b"v") for i in range(100)))
    large = get(b"/", b"GET", *((b"x-fill-%d" % i, b"a" * 8 * KiB) for i in range(8)))
    long_path = get(b"/" + b"p" * 8 * KiB)
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        for headers, status, cause in (
            (many, 431, b"headers_too_large"),
            (large, 431, b"headers_too_large"),
            (long_path, 414, b"uri_too_long"),
        ):
            answer = await wire.answer(await wire.request(headers))
            assert (answer.status, answer.headers[b"x-shoal-cause"]) == (status, cause)
        assert edge.seen() == []
        assert await wire.serves()


async def test_oversized_header_list_is_a_connection_error(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """A header list beyond what the gateway advertises (SETTINGS_MAX_HEADER_LIST_SIZE) gets
    GOAWAY and the connection closes; the upstream sees nothing."""
    huge = get(b"/", b"GET", *((b"x-fill-%d" % i, b"a" * 12 * KiB) for i in range(10)))
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        await wire.request(huge)
        assert await wire.closed()
        assert wire.goaway is not None
        assert edge.seen() == []


async def test_body_limits(redis: Redis, redis_url: str, keys: Keys) -> None:
    """content-length over max_body_bytes → 413 before any upstream byte; a body without one
    crossing the limit → 413 and the upstream never sees a complete request; DATA the client
    keeps sending after the answer is refused with RST_STREAM(NO_ERROR), and the connection
    goes on serving."""
    limit = 32 * KiB
    async with (
        edge_gateway(redis, redis_url, keys, limits={"max_body_bytes": limit}) as edge,
        H2Wire.to(edge.port) as wire,
    ):
        too_long = (b"content-length", b"%d" % (limit + 1))
        sid = await wire.request(get(b"/", b"POST", too_long), end=False)
        answer = await wire.answer(sid)
        assert (answer.status, answer.headers[b"x-shoal-cause"]) == (413, b"body_too_large")
        wire.conn.send_data(sid, b"z" * 1000)
        await wire.flush()
        await wire.read_until(lambda: wire.answers[sid].reset is not None)
        assert wire.answers[sid].reset == h2.errors.ErrorCodes.NO_ERROR
        sid = await wire.request(get(b"/", b"POST"), end=False)
        for _ in range(5):  # 40 KiB in 8 KiB DATA frames, no content-length
            wire.conn.send_data(sid, b"y" * 8 * KiB)
        await wire.flush()
        answer = await wire.answer(sid)
        assert (answer.status, answer.headers[b"x-shoal-cause"]) == (413, b"body_too_large")
        assert edge.seen() == []
        assert await wire.serves()


async def test_framing_headers_refused(redis: Redis, redis_url: str, keys: Keys) -> None:
    """transfer-encoding (with or without content-length), a non-numeric content-length, two
    different ones, or a body longer than declared are malformed in HTTP/2: h2 answers GOAWAY
    PROTOCOL_ERROR and the connection closes; nothing reaches the upstream."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        for extra in (
            [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")],
            [(b"transfer-encoding", b"chunked")],
            [(b"content-length", b"3x")],
            [(b"content-length", b"3"), (b"content-length", b"4")],
            [(b"content-length", b"2")],
        ):
            async with H2Wire.to(edge.port) as wire:
                sid = await wire.request(get(b"/", b"POST", *extra), body=b"abc")
                assert await wire.closed(), extra
                assert wire.goaway is not None, extra
                assert wire.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR, extra
                assert wire.answers.get(sid, Answer()).status is None, extra
        assert edge.seen() == []


async def _flooded(wire: H2Wire) -> None:
    """Assert the gateway said GOAWAY(ENHANCE_YOUR_CALM) and closed the connection."""
    assert await wire.closed()
    assert wire.goaway is not None
    assert wire.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


async def test_rapid_reset(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Streams opened and reset at once beyond the RST_STREAM budget → GOAWAY
    ENHANCE_YOUR_CALM and closed; at most the budget's worth of requests reached the upstream."""
    budget = FloodBudget(burst=20, rate=1.0)
    async with (
        edge_gateway(redis, redis_url, keys, limits={"h2_reset": budget}) as edge,
        H2Wire.to(edge.port) as wire,
    ):
        for _ in range(200):
            sid = wire.conn.get_next_available_stream_id()
            wire.conn.send_headers(sid, list(get(b"/reset")), end_stream=True)
            wire.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await wire.flush()
        await _flooded(wire)
        assert len(edge.seen()) <= budget.burst + 1


async def test_made_you_reset(redis: Redis, redis_url: str, keys: Keys) -> None:
    """MadeYouReset (CVE-2025-8671): streams the client makes the server reset (HEADERS with
    END_STREAM, then DATA on the half-closed stream) count against the RST_STREAM budget →
    GOAWAY ENHANCE_YOUR_CALM and closed; a stream the server reset in the same read as its
    request never reaches the upstream; no traceback."""
    budget = FloodBudget(burst=20, rate=1.0)
    # idle_timeout: framing 2,000 requests takes a loaded machine a while; the connection
    # must not be closed as idle meanwhile.
    limits = {"h2_reset": budget, "idle_timeout": 60.0}
    async with edge_gateway(redis, redis_url, keys, limits=limits) as edge:
        async with H2Wire.to(edge.port) as wire:
            for _ in range(200):  # stream by stream, as fast as it goes
                sid = wire.conn.get_next_available_stream_id()
                wire.conn.send_headers(sid, list(get(b"/made")), end_stream=True)
                await wire.flush(DataFrame(sid, data=b"x"))
            await _flooded(wire)

        def made_you_reset(conn: h2.connection.H2Connection) -> bytes:
            burst = b""
            for _ in range(2000):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, list(get(b"/one-write")), end_stream=True)
                burst += conn.data_to_send() + DataFrame(sid, data=b"x").serialize()
            return burst

        async with H2Wire.to(edge.port, first=made_you_reset) as wire:  # all in one write
            await _flooded(wire)
        seen = [record["path"] for record in edge.seen()]
        assert "/one-write" not in seen
        assert len(seen) <= budget.burst + 1


async def test_window_update_flood(redis: Redis, redis_url: str, keys: Keys) -> None:
    """WINDOW_UPDATEs beyond 10 per DATA frame the gateway sent → GOAWAY ENHANCE_YOUR_CALM and
    closed (they cost work and open no window anything waits on); a client that credits each
    DATA frame it reads keeps its connection."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        async with H2Wire.to(edge.port) as polite:
            for _ in range(20):  # acknowledge_received_data: a WINDOW_UPDATE per DATA frame
                assert (await polite.answer(await polite.request(get(b"/a")))).status == 200
            assert await polite.serves()
        async with H2Wire.to(edge.port) as wire:
            await wire.flush(*(WindowUpdateFrame(0, window_increment=1) for _ in range(500)))
            await _flooded(wire)


async def test_a_non_ascii_path_is_a_400_on_its_stream(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """A raw byte outside visible ASCII in :path gets 400 bad_path on its stream; the
    connection goes on serving and the upstream sees nothing of it."""
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        for path in (b"/caf\xc3\xa9", b"/a b", b"/\x7f"):
            answer = await wire.answer(await wire.request(get(path)))
            assert (answer.status, answer.headers.get(b"x-shoal-cause")) == (400, b"bad_path")
        sid = await wire.request(get(b"/\xff", b"POST"), b"body")
        assert (await wire.answer(sid)).status == 400
        assert await wire.serves()
        assert [record["path"] for record in edge.seen()] == ["/still"]


async def test_a_connect_for_anything_but_a_websocket_is_a_501_on_its_stream(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """The edge says SETTINGS_ENABLE_CONNECT_PROTOCOL for WebSockets (RFC 8441); a CONNECT
    asking for a TCP tunnel, or for another protocol, gets 501 not_implemented on its stream
    and reaches no upstream; the connection goes on serving."""
    tunnel = [(b":method", b"CONNECT"), (b":authority", b"echo:443")]
    udp = [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-udp"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"echo"),
    ]
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        for head in (tunnel, udp):
            answer = await wire.answer(await wire.request(head))
            assert (answer.status, answer.headers.get(b"x-shoal-cause")) == (
                501,
                b"not_implemented",
            )
        assert await wire.serves()
        assert [record["path"] for record in edge.seen()] == ["/still"]


async def test_a_zero_window_reader_is_closed_after_idle_timeout(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """A client that shuts its flow-control window (initial window 0) and never opens it holds
    a response the gateway cannot send: after idle_timeout it gets GOAWAY and the connection
    closes; a client reading normally on another connection is served meanwhile."""
    async with edge_gateway(redis, redis_url, keys, limits={"idle_timeout": 1.0}) as edge:
        async with H2Wire.to(edge.port, window=0) as reader:
            sid = await reader.request(get(b"/shut"))
            await reader.read_until(lambda: sid in reader.answers)  # the head, no body
            assert reader.answers[sid].body == b""
            async with H2Wire.to(edge.port) as other:
                assert await other.serves()
            assert await reader.closed(timeout=4.0)
            assert reader.goaway is not None
            assert reader.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR


async def test_control_frame_floods(redis: Redis, redis_url: str, keys: Keys) -> None:
    """PING, SETTINGS and PRIORITY floods each get GOAWAY ENHANCE_YOUR_CALM and a closed
    connection, while the same frames within their budget leave it serving."""
    floods: list[tuple[Callable[[], Frame], int]] = [
        (lambda: PingFrame(0, opaque_data=b"12345678"), 50),
        (lambda: SettingsFrame(0), 10),
        (lambda: PriorityFrame(101, depends_on=0, stream_weight=16), 100),
    ]
    async with edge_gateway(redis, redis_url, keys) as edge:
        for frame, burst in floods:
            async with H2Wire.to(edge.port) as polite:
                await polite.flush(*(frame() for _ in range(burst // 2)))
                assert await polite.serves()
            async with H2Wire.to(edge.port) as wire:
                await wire.flush(*(frame() for _ in range(3 * burst)))
                await _flooded(wire)


async def test_empty_data_flood(redis: Redis, redis_url: str, keys: Keys) -> None:
    """More than 10 empty DATA frames in a row → GOAWAY ENHANCE_YOUR_CALM and closed; the
    upstream never sees a complete request."""
    async with edge_gateway(redis, redis_url, keys) as edge, H2Wire.to(edge.port) as wire:
        sid = await wire.request(get(b"/", b"POST"), end=False)
        await wire.flush(*(DataFrame(sid, data=b"") for _ in range(50)))
        await _flooded(wire)
        assert edge.seen() == []


async def test_a_connection_that_opens_no_stream_is_closed_after_header_timeout(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """Preface and SETTINGS, then nothing: GOAWAY and closed after header_timeout, well before
    idle_timeout; once a stream has been served, idle_timeout applies."""
    limits = {"header_timeout": 1.0, "idle_timeout": 30.0}
    async with edge_gateway(redis, redis_url, keys, limits=limits) as edge:
        loop = asyncio.get_running_loop()
        async with H2Wire.to(edge.port) as wire:
            started = loop.time()
            assert await wire.closed(timeout=5.0)
            assert 0.9 <= loop.time() - started < 3.0
            assert wire.goaway is not None
            assert wire.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        async with H2Wire.to(edge.port) as used:
            assert await used.serves()
            assert not await used.closed(timeout=2.0)


async def test_idle_connection_gets_goaway(redis: Redis, redis_url: str, keys: Keys) -> None:
    """An HTTP/2 connection without streams is closed after idle_timeout, with GOAWAY(NO_ERROR)."""
    async with (
        edge_gateway(redis, redis_url, keys, limits={"idle_timeout": 1.0}) as edge,
        H2Wire.to(edge.port) as wire,
    ):
        loop = asyncio.get_running_loop()
        assert await wire.serves()
        started = loop.time()
        assert await wire.closed(timeout=5.0)
        assert 0.9 <= loop.time() - started < 3.0
        assert wire.goaway is not None
        assert wire.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR


async def test_a_stopping_gateway_answers_open_streams_then_says_goaway(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """When the gateway stops, a stream in flight on an HTTP/2 connection is answered whole;
    meanwhile the client is told to open no more (SETTINGS_MAX_CONCURRENT_STREAMS 0), then
    gets GOAWAY(NO_ERROR) and the connection closes."""
    slow = echo_backend("echo", delay=lambda request: 1.0 if request.path == "/slow" else 0.0)
    settings = GatewaySettings(host="127.0.0.1", port=free_port())
    async with slow as echo, serving(redis, redis_url, keys, settings) as gw:
        await Registry(redis, keys).put_instances([echo.endpoint("echo", "v1")], ttl=60)
        await gw.client.apply(parse_text(ROUTES))
        await gw.settle()
        async with H2Wire.to(gw.port) as wire:
            sid = await wire.request(get(b"/slow"))
            await eventually(
                lambda: echo.seen,
                "the request to reach the upstream",
                until=lambda seen: any(record["path"] == "/slow" for record in seen),
            )
            gw.stop.set()
            await wire.read_until(lambda: wire.conn.remote_settings.max_concurrent_streams == 0)
            answer = await wire.answer(sid)
            assert answer.status == 200 and answer.ended
            assert await wire.closed()
            assert wire.goaway is not None
            assert wire.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
