"""Running the load generators (wrk, h2load) against a port and parsing what they print.

Protocols: ``h1`` (HTTP/1.1 in clear text), ``h2c`` (HTTP/2 in clear text, prior knowledge) and
``h2`` (HTTP/2 over TLS, negotiated by ALPN). Shapes: ``saturation`` (as many requests as the
server can take from 50 connections) and ``rate`` (a fixed total rate, latency measured there).

Which tool does what:

- h1 saturation: ``wrk -t1 -c50 --latency``.
- h1 rate: ``wrk`` paced by ``pace.lua`` (a fixed schedule, wrk2 is not in Debian). h2load
  ``--h1`` can do it too (``h1_rate_tool="h2load"``) but cannot read the status of responses
  whose status line has an empty reason phrase, which is what hypercorn sends.
- h2c / h2 saturation: ``h2load -c50 -m10``; rate: ``h2load -c10 -m10 --rps R/10`` with the
  10 connections opened 1 ms apart (see ``h2load_command``), up to 10 streams in flight each.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.parsing import LoadResult, ParseError, parse_h2load, parse_h2load_log, parse_wrk
from bench.tools import Toolbox

Protocol = Literal["h1", "h2c", "h2"]
Shape = Literal["saturation", "rate"]
PROTOCOLS: tuple[Protocol, ...] = ("h1", "h2c", "h2")
SHAPES: tuple[Shape, ...] = ("saturation", "rate")

PACE_SCRIPT = Path(__file__).resolve().parent / "pace.lua"
SATURATION_CONNECTIONS = 50
H2_STREAMS = 10
RATE_CONNECTIONS = 10
# h2load's --rps timer period (observed with h2load 1.52: requests leave in 10 ms batches).
RATE_TICK_MS = 10.0


class LoadError(RuntimeError):
    """A load generator failed or printed something we cannot read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One load run: protocol, shape, port, and how long."""

    protocol: Protocol
    shape: Shape
    port: int
    duration_s: float
    rate: int = 1000

    @property
    def url(self) -> str:
        """The URL to load (https for h2 over TLS)."""
        scheme = "https" if self.protocol == "h2" else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """A parsed load result plus the tool and command that produced it."""

    tool: str
    command: list[str]
    result: LoadResult


def _seconds(duration_s: float) -> str:
    return str(max(1, round(duration_s)))


def wrk_command(tools: Toolbox, spec: LoadSpec) -> list[str]:
    """The wrk command line for an h1 run (saturation, or paced to ``spec.rate``)."""
    connections = SATURATION_CONNECTIONS if spec.shape == "saturation" else RATE_CONNECTIONS
    argv = [tools.path("wrk"), "-t1", f"-c{connections}", f"-d{_seconds(spec.duration_s)}s"]
    argv += ["--latency", "--timeout", "5s"]
    if spec.shape == "rate":
        return [*argv, "-s", str(PACE_SCRIPT), spec.url, "--", str(spec.rate)]
    return [*argv, spec.url]


def h2load_command(tools: Toolbox, spec: LoadSpec, log_file: Path) -> list[str]:
    """The h2load command line for a run, writing the per-request log to ``log_file``.

    At a fixed rate h2load sends each connection's ``--rps`` share on a 10 ms tick, and the
    ticks of connections opened together coincide: 1000 req/s from 10 connections arrived as
    bursts of 10 every 10 ms, and latency measured the queue behind each burst. So the rate
    shape opens its connections one per ``RATE_TICK_MS / RATE_CONNECTIONS`` ms (``-r 1
    --rate-period``), which staggers the ticks and spreads arrivals over the tick. h2load
    forbids ``-D`` with ``-r``, hence a request count (``-n``) of rate x duration.
    """
    argv = [tools.path("h2load"), "-t1", f"--log-file={log_file}"]
    # For HTTP/1.1, h2load's -m is the pipelining depth: keep one request per connection.
    streams = 1 if spec.protocol == "h1" else H2_STREAMS
    argv += ["-m", str(streams)]
    if spec.shape == "saturation":
        argv += ["-D", _seconds(spec.duration_s), "-c", str(SATURATION_CONNECTIONS)]
    else:
        total = max(RATE_CONNECTIONS, round(spec.rate * spec.duration_s))
        stagger_ms = RATE_TICK_MS / RATE_CONNECTIONS
        argv += ["-n", str(total), "-c", str(RATE_CONNECTIONS), "-r", "1"]
        argv += [f"--rate-period={stagger_ms:g}ms", f"--rps={spec.rate / RATE_CONNECTIONS:g}"]
    if spec.protocol == "h1":
        argv.append("--h1")
    return [*argv, spec.url]


def _run(argv: list[str], cpu: int | None, timeout: float) -> str:
    full = ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{argv[0]} did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LoadError(f"{Path(argv[0]).name} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def tool_for(spec: LoadSpec, h1_rate_tool: Literal["wrk", "h2load"] = "wrk") -> str:
    """Which load generator runs ``spec``: wrk for HTTP/1.1 (unless told otherwise), else h2load."""
    if spec.protocol == "h1" and (spec.shape == "saturation" or h1_rate_tool == "wrk"):
        return "wrk"
    return "h2load"


def run_load(
    tools: Toolbox,
    spec: LoadSpec,
    *,
    cpu: int | None,
    scratch: Path,
    h1_rate_tool: Literal["wrk", "h2load"] = "wrk",
) -> Measurement:
    """Run one load spec pinned to ``cpu`` and return what it measured."""
    timeout = spec.duration_s + 30.0
    if tool_for(spec, h1_rate_tool) == "wrk":
        argv = wrk_command(tools, spec)
        out = _run(argv, cpu, timeout)
        try:
            return Measurement(tool="wrk", command=argv, result=parse_wrk(out))
        except ParseError as exc:
            raise LoadError(f"wrk: {exc}") from exc
    log_file = scratch / f"h2load-{spec.protocol}-{spec.shape}-{spec.port}.log"
    log_file.unlink(missing_ok=True)
    argv = h2load_command(tools, spec, log_file)
    out = _run(argv, cpu, timeout)
    try:
        log = parse_h2load_log(log_file.read_text()) if log_file.exists() else None
        return Measurement(tool="h2load", command=argv, result=parse_h2load(out, log))
    except ParseError as exc:
        raise LoadError(f"h2load: {exc}") from exc
    finally:
        log_file.unlink(missing_ok=True)
