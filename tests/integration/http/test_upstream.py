"""The HTTP/1.1 upstream pool against real sockets: what it sends is what it was given."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shoal.mesh.upstream import MAX_CONNECTING, UpstreamError, Upstreams
from tests.support.backends import echo_backend
from tests.support.tls import mesh_contexts, self_signed
from tests.support.upstream import pieces, read_body
from tests.support.wait import eventually


@dataclass
class RawServer:
    """A loopback server that records each connection's bytes and answers scripted bytes."""

    port: int = 0
    received: list[bytearray] = field(default_factory=list)
    connections: int = 0


@asynccontextmanager
async def raw_server(
    reply: Callable[[bytes], tuple[bytes, bool] | None],
) -> AsyncIterator[RawServer]:
    """When the bytes of a connection so far end a request, ``reply`` returns what to write
    and whether to keep the connection open (None: not yet)."""
    server = RawServer()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        writers.append(writer)
        record = bytearray()
        server.received.append(record)
        pending = bytearray()
        try:
            while data := await reader.read(65536):
                record += data
                pending += data
                answer = reply(bytes(pending))
                if answer is None:
                    continue
                pending.clear()
                writer.write(answer[0])
                if not answer[1]:
                    break
            await writer.drain()
        except ConnectionError:
            pass  # the client gave up: what a test of failures does
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = int(srv.sockets[0].getsockname()[1])
    try:
        yield server
    finally:
        srv.close()
        for writer in writers:
            writer.close()
        await srv.wait_closed()


def after_head(
    reply: bytes, keep_open: bool = True
) -> Callable[[bytes], tuple[bytes, bool] | None]:
    """Answer ``reply`` once a whole bodiless request head has arrived."""
    return lambda seen: (reply, keep_open) if seen.endswith(b"\r\n\r\n") else None


async def test_target_and_values_go_out_byte_for_byte() -> None:
    """The raw target (escapes, '+', UTF-8 escapes) and header values are sent as given."""
    target = "/p/%2F?p=100%25&y=%2F%3F%26%3D&h=%23frag&q=%E2%9C%93&x=a%20b+c"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(after_head(ok)) as server:
        pool = Upstreams()
        response = await pool.request(
            f"127.0.0.1:{server.port}", "GET", target, [(b"x-v", b"a%20b")], None
        )
        assert await read_body(response) == b"ok"
        await pool.close()
    sent = bytes(server.received[0])
    assert sent.startswith(f"GET {target} HTTP/1.1\r\n".encode())
    assert b"\r\nx-v: a%20b\r\n" in sent
    assert f"\r\nhost: 127.0.0.1:{server.port}\r\n".encode() in sent


@pytest.mark.parametrize("size", [10_000, 900_000])  # the echo server reads up to 1 MiB
async def test_a_body_of_unknown_length_goes_chunked_and_arrives_intact(size: int) -> None:
    """A streamed body without Content-Length is sent chunked; a real server reads it whole."""
    data = bytes(range(256)) * (size // 256)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async with echo_backend("b") as backend:
        pool = Upstreams()
        response = await pool.request(f"127.0.0.1:{backend.port}", "POST", "/u", [], pieces())
        record = json.loads(await read_body(response))
        await pool.close()
    assert record["headers"]["transfer-encoding"] == "chunked"
    assert record["body_len"] == len(data)


async def test_a_known_length_body_streams_with_its_length() -> None:
    """A streamed body whose Content-Length was given keeps it and is sent unchunked."""
    data = b"x" * 100_000

    async def pieces() -> AsyncIterator[bytes]:
        yield data[:40_000]
        yield data[40_000:]

    async with echo_backend("b") as backend:
        pool = Upstreams()
        headers = [(b"content-length", b"100000"), (b"transfer-encoding", b"chunked")]
        response = await pool.request(f"127.0.0.1:{backend.port}", "PUT", "/u", headers, pieces())
        record = json.loads(await read_body(response))
        await pool.close()
    assert record["headers"]["content-length"] == "100000"
    assert "transfer-encoding" not in record["headers"]
    assert record["body_len"] == len(data)


async def test_trailers_and_a_32_kib_header_come_back() -> None:
    """A chunked response's trailers and a 32 KiB response header reach the caller."""
    big = b"v" * 32 * 1024
    answer = (
        b"HTTP/1.1 200 OK\r\nX-Big: " + big + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"
    )
    async with raw_server(after_head(answer)) as server:
        pool = Upstreams()
        response = await pool.request(
            f"127.0.0.1:{server.port}", "GET", "/", [(b"x-req", big)], None
        )
        assert dict(response.headers)[b"x-big"] == big
        assert await read_body(response) == b"abc"
        assert response.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"fine")]
        await pool.close()
    assert b"x-req: " + big in bytes(server.received[0])


async def test_keep_alive_reuses_one_connection_and_head_has_no_body() -> None:
    """Sequential requests share a connection; a HEAD answer announcing a length has no body."""

    def reply(seen: bytes) -> tuple[bytes, bool] | None:
        if not seen.endswith(b"\r\n\r\n"):
            return None
        body = b"" if seen.startswith(b"HEAD") else b"hello"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body, True

    async with raw_server(reply) as server:
        pool = Upstreams()
        authority = f"127.0.0.1:{server.port}"
        for method in ("GET", "HEAD", "GET"):
            response = await pool.request(authority, method, "/", [], None)
            expected = b"" if method == "HEAD" else b"hello"
            assert await read_body(response) == expected
        await pool.close()
    assert server.connections == 1


async def test_an_idle_connection_the_upstream_closed_is_replaced_once() -> None:
    """When the upstream closes a kept-alive connection, the next request goes on a new one."""
    answered = 0

    def reply(seen: bytes) -> tuple[bytes, bool] | None:
        nonlocal answered
        if not seen.endswith(b"\r\n\r\n"):
            return None
        answered += 1
        if answered % 2 == 0:
            return b"", False  # close instead of answering the second request on this connection
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True

    async with raw_server(reply) as server:
        pool = Upstreams()
        authority = f"127.0.0.1:{server.port}"
        for _ in range(2):
            response = await pool.request(authority, "GET", "/", [], None)
            assert await read_body(response) == b"ok"
        await pool.close()
    assert server.connections == 2


async def test_failures_carry_cause_status_and_whether_anything_was_sent() -> None:
    """Nothing listening: 503 connect error, unsent; no head in time: 504, sent; a connection
    dropped mid-body: 502 reset."""
    pool = Upstreams(connect_timeout=1.0)
    async with raw_server(after_head(b"", keep_open=False)) as closed:
        port = closed.port
    with pytest.raises(UpstreamError) as e:
        await pool.request(f"127.0.0.1:{port}", "GET", "/", [], None)
    assert (e.value.status, e.value.cause, e.value.sent) == (503, "upstream_connect_error", False)
    async with raw_server(lambda seen: None) as silent:
        with pytest.raises(UpstreamError) as e:
            await pool.request(f"127.0.0.1:{silent.port}", "GET", "/", [], None, head_timeout=0.2)
        assert (e.value.status, e.value.cause, e.value.sent) == (504, "upstream_timeout", True)
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with raw_server(after_head(cut, keep_open=False)) as s:
        response = await pool.request(f"127.0.0.1:{s.port}", "GET", "/", [], None)
        with pytest.raises(UpstreamError) as e:
            await read_body(response)
        assert (e.value.status, e.value.cause) == (502, "upstream_reset")
    await pool.close()


async def test_a_slow_reader_pauses_the_upstream() -> None:
    """A 16 MB response read slowly is never buffered whole: reading pauses at the high mark."""
    size = 16 * 1024 * 1024
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size
    async with raw_server(after_head(answer)) as server:
        pool = Upstreams()
        response = await pool.request(f"127.0.0.1:{server.port}", "GET", "/", [], None)
        digest, most = hashlib.sha256(), 0
        async for piece in pieces(response):
            digest.update(piece)
            most = max(most, response.buffered)
        await pool.close()
    assert digest.digest() == hashlib.sha256(b"z" * size).digest()
    assert most < 2 * 1024 * 1024


async def test_over_tls_a_connection_is_kept_and_reused(tmp_path: Path) -> None:
    """Over TLS (the mesh hop), requests flow and share one pooled connection."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        pending = b""
        while data := await reader.read(65536):
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = int(srv.sockets[0].getsockname()[1])
    pool = Upstreams()
    try:
        for _ in range(3):
            response = await pool.request(f"127.0.0.1:{port}", "GET", "/", [], None, tls=client_tls)
            assert await read_body(response) == b"ok"
    finally:
        await pool.close()
        srv.close()
        await srv.wait_closed()
    assert connections == 1


async def test_a_router_must_present_the_node_it_was_meant_to_be(tmp_path: Path) -> None:
    """A mesh upstream is checked for the SPIFFE ID it was meant to present: another identity
    signed by the same CA (a router of another node at that address) is a connect failure,
    nothing sent; the right one serves."""
    td = "shoal.test"
    server_tls, client_tls = mesh_contexts(
        tmp_path, td, f"spiffe://{td}/node/n1", f"spiffe://{td}/gateway"
    )
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    authority = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    pool = Upstreams()
    try:
        with pytest.raises(UpstreamError) as e:
            await pool.request(
                authority, "GET", "/", [], None, tls=client_tls, peer=f"spiffe://{td}/node/n2"
            )
        assert (e.value.status, e.value.cause, e.value.sent) == (
            503,
            "upstream_connect_error",
            False,
        )
        assert "presented spiffe://shoal.test/node/n1" in str(e.value)
        response = await pool.request(
            authority, "GET", "/", [], None, tls=client_tls, peer=f"spiffe://{td}/node/n1"
        )
        assert await read_body(response) == b"ok"
    finally:
        await pool.close()
        srv.close()
        await srv.wait_closed()
    assert requests == 1


async def test_a_connect_that_cannot_finish_within_the_attempt_is_a_connect_failure() -> None:
    """A listener whose accept queue is full never completes a connect: the attempt's deadline
    ends it as a connect failure (503, nothing sent), not after the pool's connect timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (the kernel allows backlog + 1)
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        pool = Upstreams(connect_timeout=30.0)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as e:
            await pool.request(f"127.0.0.1:{port}", "GET", "/", [], None, head_timeout=0.3)
        assert (e.value.status, e.value.cause, e.value.sent) == (
            503,
            "upstream_connect_error",
            False,
        )
        assert time.monotonic() - started < 5
        await pool.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_burst_waits_for_a_few_handshakes_and_shares_their_connections(
    tmp_path: Path,
) -> None:
    """Ten requests at once to an upstream whose TLS handshakes hang: only MAX_CONNECTING
    connections are being made (a connection opened later, by another client, is accepted
    while the rest wait); once the handshakes go through, all ten are answered, the waiting
    ones on connections freed by the others or made as handshakes end."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    release = threading.Event()
    accepted: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(connection: socket.socket) -> None:
        """Reads nothing (the ClientHello waits in the kernel) until released; then the
        handshake, then ``ok`` to every request head."""
        release.wait()
        with contextlib.suppress(OSError), server_tls.wrap_socket(connection, True) as tls:
            pending = b""
            while data := tls.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    _, pending = pending.split(b"\r\n\r\n", 1)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, peer = listener.accept()
                accepted.append(peer[1])
                threading.Thread(target=serve, args=(connection,), daemon=True).start()

    async def get() -> bytes:
        response = await pool.request(f"127.0.0.1:{port}", "GET", "/", [], None, tls=client_tls)
        return await read_body(response)

    threading.Thread(target=accept, daemon=True).start()
    pool = Upstreams(connect_timeout=30.0)
    burst = [asyncio.create_task(get()) for _ in range(10)]
    sentinel = socket.socket()
    try:
        await eventually(lambda: len(accepted), "connections accepted", until=MAX_CONNECTING.__eq__)
        sentinel.connect(("127.0.0.1", port))
        sentinel_port = sentinel.getsockname()[1]
        await eventually(lambda: sentinel_port in accepted, "the other client's connection")
        assert len(accepted) == MAX_CONNECTING + 1 and not any(t.done() for t in burst)
        release.set()
        assert await asyncio.gather(*burst) == [b"ok"] * 10
    finally:
        release.set()
        sentinel.close()
        for task in burst:
            task.cancel()
        await pool.close()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        listener.close()
