"""Measuring one row: start it (and its backend), run each protocol x shape, stop everything.

Around every load run the CPU time of four parties is read: the server under test (its process
tree, from /proc), the backend (same), the load generator (this process's children rusage) and
the whole machine (/proc/stat). What the machine spent beyond those three is "other": processes
that are not part of the benchmark, whose noise the report flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from bench.load import LoadError, LoadSpec, Protocol, Shape, run_load, tool_for
from bench.process import (
    RunningServer,
    ServerStartError,
    children_cpu_seconds,
    pin_tree,
    system_busy_seconds,
    tree_cpu_seconds,
    wait_until_quiet,
)
from bench.results import Entry
from bench.rows import Row, RowContext
from bench.servers import start_backend
from bench.tls import TLSFiles
from bench.tools import Toolbox

# Above this share of the run's wall time, CPU used by other processes is flagged as noise.
NOISE_SHARE = 0.10
# Below this share, a saturation run's server had idle time: the bottleneck was elsewhere.
SATURATED_SHARE = 0.90


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to run against each row, and where."""

    protocols: list[Protocol]
    shapes: list[Shape]
    duration_s: float
    rate: int
    h1_rate_tool: Literal["wrk", "h2load"]
    server_cpu: int | None
    loadgen_cpu: int | None
    backend_cpu: int | None
    wait_quiet_s: float = 0.0
    warmup_s: float = 0.0  # the same load first, not counted: pools, caches and TLS sessions warm


@dataclass(frozen=True, slots=True, kw_only=True)
class _CpuSnapshot:
    server: float
    backend: float
    loadgen: float
    machine: float

    @staticmethod
    def take(server: RunningServer, backend: RunningServer | None) -> _CpuSnapshot:
        return _CpuSnapshot(
            server=tree_cpu_seconds(server.pid),
            backend=tree_cpu_seconds(backend.pid) if backend else 0.0,
            loadgen=children_cpu_seconds(),
            machine=system_busy_seconds(),
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _row_entry(row: Row, status: Literal["skipped", "not available", "error"], note: str) -> Entry:
    return Entry(row=row.name, protocol="*", shape="*", status=status, note=note)


def measure_row(
    row: Row,
    plan: Plan,
    *,
    tools: Toolbox,
    workdir: Path,
    tls: TLSFiles,
    progress: Callable[[Entry], None],
) -> list[Entry]:
    """Start one row (and a fresh backend if it proxies), measure it, stop everything."""
    if not tools.has(*row.tools):
        return [_row_entry(row, "skipped", tools.why_missing(*row.tools))]
    entries: list[Entry] = []
    backend: RunningServer | None = None
    server: RunningServer | None = None
    try:
        if row.needs_backend:
            backend = start_backend(tools, workdir, tls, plan.backend_cpu)
        ctx = RowContext(
            tools=tools,
            workdir=workdir,
            tls=tls,
            server_cpu=plan.server_cpu,
            backend_port=backend.h1_port if backend else None,
        )
        try:
            server = row.start(ctx)
        except (NotImplementedError, ServerStartError) as exc:
            return [_row_entry(row, "not available", _first_line(exc))]
        except Exception as exc:
            # A bug in a row's start code (the Shoal rows are written elsewhere) costs that
            # row only; the other rows still run and the report says what happened.
            return [_row_entry(row, "error", f"{type(exc).__name__}: {_first_line(exc)}")]
        if plan.server_cpu is not None:
            pin_tree(server.pid, plan.server_cpu)
        for protocol in plan.protocols:
            for shape in plan.shapes:
                entry = measure_one(
                    row,
                    plan,
                    protocol,
                    shape,
                    server=server,
                    backend=backend,
                    tools=tools,
                    scratch=workdir,
                )
                entries.append(entry)
                progress(entry)
        entries += [Entry(row=row.name, protocol="*", shape="*", note=n) for n in server.notes]
    finally:
        if server is not None:
            server.stop()
        if backend is not None:
            backend.stop()
    return entries


def measure_one(
    row: Row,
    plan: Plan,
    protocol: Protocol,
    shape: Shape,
    *,
    server: RunningServer,
    backend: RunningServer | None,
    tools: Toolbox,
    scratch: Path,
) -> Entry:
    """One load run against a running server, with everyone's CPU time around it."""
    entry = Entry(row=row.name, protocol=protocol, shape=shape)
    port = {"h1": server.h1_port, "h2c": server.h2c_port, "h2": server.tls_port}[protocol]
    if port is None:
        entry.status, entry.note = "skipped", f"{row.name} offers no {protocol} port"
        return entry
    if server.process.poll() is not None:
        entry.status, entry.note = "error", f"server exited ({server.process.returncode})"
        return entry
    spec = LoadSpec(
        protocol=protocol, shape=shape, port=port, duration_s=plan.duration_s, rate=plan.rate
    )
    tool = tool_for(spec, plan.h1_rate_tool)
    if not tools.has(tool):
        entry.status, entry.note = "skipped", tools.why_missing(tool)
        return entry
    if plan.warmup_s > 0:
        warm = replace(spec, duration_s=plan.warmup_s)
        with contextlib.suppress(LoadError):  # the measured run reports any failure
            run_load(
                tools, warm, cpu=plan.loadgen_cpu, scratch=scratch, h1_rate_tool=plan.h1_rate_tool
            )
    quiet = plan.wait_quiet_s <= 0 or wait_until_quiet(plan.wait_quiet_s)
    before = _CpuSnapshot.take(server, backend)
    try:
        measurement = run_load(
            tools, spec, cpu=plan.loadgen_cpu, scratch=scratch, h1_rate_tool=plan.h1_rate_tool
        )
    except LoadError as exc:
        entry.status, entry.note = "error", str(exc)
        return entry
    after = _CpuSnapshot.take(server, backend)
    result = measurement.result
    entry.tool, entry.command = measurement.tool, measurement.command
    entry.requests, entry.rps, entry.errors = result.requests, result.rps, result.errors
    entry.p50_ms, entry.p99_ms = result.p50_ms, result.p99_ms
    entry.cpu_s = after.server - before.server
    entry.backend_cpu_s = after.backend - before.backend
    entry.loadgen_cpu_s = after.loadgen - before.loadgen
    entry.other_cpu_s = max(
        0.0,
        after.machine - before.machine - entry.cpu_s - entry.backend_cpu_s - entry.loadgen_cpu_s,
    )
    if result.requests:
        entry.cpu_us_per_req = entry.cpu_s / result.requests * 1e6
    notes = _notes(entry, plan, result.duration_s, result.unparsed_status)
    if not quiet:
        notes.append(f"machine not quiet after waiting {plan.wait_quiet_s:g}s")
    entry.note = "; ".join(notes)
    if result.requests == 0:
        entry.status = "error"
    return entry


def _notes(entry: Entry, plan: Plan, wall_s: float, unparsed: int) -> list[str]:
    """Warnings worth printing beside a measurement."""
    notes: list[str] = []
    wall = wall_s or plan.duration_s
    if entry.requests == 0:
        notes.append("no request completed")
    cpu = entry.cpu_s or 0.0
    if entry.shape == "saturation" and cpu < SATURATED_SHARE * wall:
        notes.append(f"server core only {cpu / wall:.0%} busy")
    if entry.other_cpu_s is not None and entry.other_cpu_s > NOISE_SHARE * wall:
        notes.append(f"other processes used {entry.other_cpu_s:.1f} cpu s")
    if unparsed:
        notes.append(f"{unparsed} statuses unreadable by h2load (empty reason phrase)")
    if entry.shape == "rate" and (entry.rps or 0.0) < 0.95 * plan.rate:
        notes.append(f"below target rate {plan.rate}")
    return notes
