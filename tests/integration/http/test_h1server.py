"""The HTTP/1.1 server core against real clients (curl, raw sockets)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shoal.mesh.h1server import Exchange, Handler, Server


@asynccontextmanager
async def serving(
    handler: Handler, idle_timeout: float = 60.0
) -> AsyncIterator[tuple[int, Server]]:
    """``handler`` on a free loopback port."""
    server = Server(handler, idle_timeout=idle_timeout)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        yield int(listener.sockets[0].getsockname()[1]), server
    finally:
        listener.close()
        await server.close(grace=1.0)
        await listener.wait_closed()


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    """Run curl; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out, err


async def digest(exchange: Exchange) -> None:
    """Answers the target, the sha256 and length of the body, and one trailer."""
    sha, size = hashlib.sha256(), 0
    if exchange.has_body:
        async for piece in exchange.body():
            sha.update(piece)
            size += len(piece)
    await exchange.start(200, [(b"x-target", exchange.head.target)])
    await exchange.write(f"{sha.hexdigest()} {size}".encode())
    await exchange.end([(b"x-checksum", sha.hexdigest().encode())])


async def test_chunked_and_expect_continue_uploads_arrive_whole(tmp_path: object) -> None:
    """curl's chunked upload and its Expect: 100-continue upload (above 1 MB) both arrive
    intact, with one 100 and one final answer; the raw target is what the handler sees."""
    from pathlib import Path

    data = bytes(range(256)) * 8192  # 2 MiB
    path = Path(str(tmp_path)) / "up.bin"
    path.write_bytes(data)
    want = f"{hashlib.sha256(data).hexdigest()} {len(data)}".encode()
    async with serving(digest) as (port, _):
        url = f"http://127.0.0.1:{port}/u?p=100%25&h=%23x"
        code, out, err = await curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}", url
        )
        assert code == 0, err
        assert out == want
        code, out, err = await curl("-v", "--data-binary", f"@{path}", url)
        assert code == 0, err
        assert out == want
        assert err.count(b"< HTTP/1.1 100 Continue") == 1
        assert err.count(b"< HTTP/1.1 200 OK") == 1
        code, out, err = await curl("-i", url)
        assert b"x-target: /u?p=100%25&h=%23x\r\n" in out


async def test_trailers_reach_a_client_that_asks_for_them() -> None:
    """A chunked response's trailers go out after the last chunk."""
    async with serving(digest) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        raw = await reader.read(-1)
        writer.close()
    empty = hashlib.sha256().hexdigest()
    assert b"transfer-encoding: chunked\r\n" in raw
    assert raw.endswith(b"0\r\nx-checksum: " + empty.encode() + b"\r\n\r\n")


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    """Three requests in one write get three answers, in order, on the same connection."""
    async with serving(digest) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        raw = await reader.read(-1)
        writer.close()
    targets = [line for line in raw.split(b"\r\n") if line.startswith(b"x-target")]
    assert targets == [b"x-target: /1", b"x-target: /2", b"x-target: /3"]


async def test_a_bad_head_gets_its_status_and_cause_and_the_connection_closes() -> None:
    """Content-Length with Transfer-Encoding is answered 400 bad_framing by the server itself,
    and no handler runs."""
    seen: list[bytes] = []

    async def record(exchange: Exchange) -> None:
        seen.append(exchange.head.target)
        await exchange.respond(200)

    async with serving(record) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        raw = await reader.read(-1)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"x-shoal-cause: bad_framing\r\n" in raw and b"server: shoal\r\n" in raw
    assert seen == []


async def test_a_client_that_goes_away_cancels_its_handler() -> None:
    """Closing the connection mid-request cancels the handler at once."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(exchange: Exchange) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(slow) as (port, _):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            await started.wait()
        writer.close()
        async with asyncio.timeout(5):
            await cancelled.wait()


async def test_an_idle_connection_is_closed_after_a_request_and_before_one() -> None:
    """Connections idle longer than idle_timeout are closed: one that never sent a request,
    and one whose request was answered (the answer arrives whole first)."""
    async with serving(digest, idle_timeout=0.4) as (port, _):
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            assert await silent_reader.read() == b""
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(
            b"0\r\nx-checksum: " + hashlib.sha256().hexdigest().encode() + b"\r\n\r\n"
        )
        silent.close()
        writer.close()
