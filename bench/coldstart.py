"""Cold start of an ``app:`` service through the gateway: ``python -m bench.coldstart``.

Starts a real platform (``shoal up`` in a temporary ``SHOAL_HOME`` on free ports), applies the
example's hello app as a Service with ``scale: {min: 0, idle_timeout: 1s}``, and for each run
waits until the service has no instance (the controller scales it to zero about a second after
the last request and the agent drains it), lets the platform settle for a moment, then times
one ``GET /`` through the gateway (``Host: coldstart``, a new connection) from the request's
first byte to the response's last, and checks that a new instance answered 200.

It does that twice, on two fresh platforms: with templates (the default: instances forked from
a pre-warmed template, see ``shoal/platform/runtime/template_process.py``) and with
``SHOAL_TEMPLATES=0`` (every instance a fresh interpreter), then prints p50/p90/p99/min/max of
each and their ratio. The first activation on each platform is left out of the statistics and
shown apart: it also pays for one-time work (the service's mesh listener and certificate; with
templates, starting the revision's template).

    .venv/bin/python -m bench.coldstart [--runs 20] [--modes templates,fresh] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import parsing
from shoal.platform.control.client import Client
from shoal.resources.manifest import parse_text
from shoal.store.connection import connect
from shoal.store.embedded import free_port, recorded_url
from shoal.store.keys import Keys

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "hello-world"
SERVICE = "coldstart"
MANIFEST = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: {SERVICE}}}
spec:
  app: app:hello
  workdir: {EXAMPLE}
  scale: {{min: 0, idle_timeout: 1s}}
  health: {{path: /healthz}}
"""
UP = [sys.executable, "-m", "shoal", "up"]
MODES = {"templates": "1", "fresh": "0"}  # mode -> SHOAL_TEMPLATES
START_TIMEOUT = 60.0  # seconds for ``shoal up`` to print its banner
ZERO_TIMEOUT = 30.0  # seconds for the service to be scaled back to zero
SETTLE = 0.2  # seconds after zero: the gateway's snapshot catches up, the CPU goes quiet
REQUEST_TIMEOUT = 30.0


@dataclass
class Result:
    """The cold starts (seconds) measured on one platform."""

    mode: str
    first: float = 0.0
    starts: list[float] = field(default_factory=list)
    zero_waits: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty sample."""
    return parsing.percentile(sorted(values), q)


class Platform:
    """``shoal up`` in its own state dir and session, stopped (or killed) on exit."""

    def __init__(self, home: Path, templates: str) -> None:
        self.home = home
        self.port = free_port()
        self.mesh_port = free_port()
        self.log = home / "up.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "SHOAL_REDIS_URL"},
            "SHOAL_HOME": str(home),
            "SHOAL_TEMPLATES": templates,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Platform:
        self.home.mkdir(parents=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*UP, "--port", str(self.port), "--mesh-port", str(self.mesh_port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while b"\nstatus " not in self.log.read_bytes() or not self._gateway_listens():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"shoal up did not start; see {self.log}")
            time.sleep(0.1)
        return self

    def _gateway_listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    @property
    def redis_url(self) -> str:
        """The embedded Redis ``shoal up`` started."""
        url = recorded_url(self.home)
        if url is None:
            raise SystemExit(f"no store recorded under {self.home}")
        return url


async def get(port: int, host: str) -> tuple[int, dict[str, str], float]:
    """One ``GET /`` on a new connection: status, headers, seconds from first byte sent to the
    last byte received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
        }
        await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, time.perf_counter() - started
    finally:
        writer.close()
        await writer.wait_closed()


async def measure(platform: Platform, mode: str, runs: int) -> Result:
    """Apply the service, then ``runs`` + 1 cold starts (the first reported apart)."""
    redis = connect(platform.redis_url)
    client = Client(redis, Keys("shoal:"))
    result = Result(mode)
    seen: set[str] = set()
    try:
        applied = await client.apply(parse_text(MANIFEST))
        lagging = await client.wait_applied(applied.revision, 30)
        if lagging:
            raise SystemExit(f"components did not apply the service: {lagging}")
        for run in range(runs + 1):
            waited = await zero(client)
            await asyncio.sleep(SETTLE)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, headers, took = await get(platform.port, SERVICE)
            instance = headers.get("x-instance", "")
            if status != 200 or instance in seen:
                raise SystemExit(
                    f"{mode} run {run}: status {status}, instance {instance!r} "
                    f"(seen before: {instance in seen}); logs in {platform.home / 'logs'}"
                )
            seen.add(instance)
            if run == 0:
                result.first = took
            else:
                result.starts.append(took)
                result.zero_waits.append(waited)
            print(f"  {mode:<9} run {run:>2}: {took * 1000:7.1f} ms (zero after {waited:.1f} s)")
    finally:
        await redis.aclose()
    return result


async def zero(client: Client) -> float:
    """Wait until the service has no instance; how long that took."""
    started = time.monotonic()
    while [e for e in await client.registry.instances() if e.service == SERVICE]:
        if time.monotonic() - started > ZERO_TIMEOUT:
            raise SystemExit(f"{SERVICE} still has instances after {ZERO_TIMEOUT:g}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def report(results: list[Result]) -> None:
    """The table, and the ratio of the first two modes."""
    print()
    print(f"cold start: request to full response through the gateway, ms ({SERVICE}: app:hello)")
    columns = ["mode", "runs", "p50", "p90", "p99", "min", "max", "first", "zero-wait p50"]
    print(f"{columns[0]:<10}" + "".join(f"{c:>8}" for c in columns[1:-1]) + f"{columns[-1]:>15}")
    for r in results:
        cells = [percentile(r.starts, q) for q in (50, 90, 99)]
        cells += [min(r.starts), max(r.starts), r.first]
        row = f"{r.mode:<10}{len(r.starts):>8}" + "".join(f"{c * 1000:8.1f}" for c in cells)
        print(row + f"{percentile(r.zero_waits, 50):14.1f}s")
    if len(results) == 2:
        a, b = results
        for q in (50, 99):
            ratio = percentile(b.starts, q) / percentile(a.starts, q)
            print(f"p{q}: {b.mode} / {a.mode} = {ratio:.1f}x")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="measured cold starts per mode")
    parser.add_argument(
        "--modes", default="templates,fresh", help="comma-separated: templates, fresh"
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.runs < 1 or not modes or any(m not in MODES for m in modes):
        parser.error(f"--runs must be >= 1 and --modes a list of {', '.join(MODES)}")
    root = Path(tempfile.mkdtemp(prefix="shoal-coldstart-"))
    results = []
    started = time.monotonic()
    try:
        for mode in modes:
            print(f"{mode}: starting a platform (SHOAL_TEMPLATES={MODES[mode]})")
            with Platform(root / mode, MODES[mode]) as platform:
                results.append(asyncio.run(measure(platform, mode, args.runs)))
    finally:
        if args.keep:
            print(f"state and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(results)
    print(f"(bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
