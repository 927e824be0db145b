"""Benchmark harness: ``python -m bench.run [--quick] [--duration S] [--only ROWS]``.

For each row (see ``bench.rows``) it starts a fresh server under test (and a fresh backend for
the proxy rows), runs every protocol x shape against it with the load generator pinned to one
core and the server to the other, reads CPU times from /proc around each run (see
``bench.measure``), stops everything, and finally prints a table and writes
``bench/results/<timestamp>.json``.
Every server runs in its own process group and is killed on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench.load import PROTOCOLS, SHAPES
from bench.measure import Plan, measure_row
from bench.process import BACKEND_CPU, LOADGEN_CPU, SERVER_CPU
from bench.report import compute_ratios, markdown_table, print_report
from bench.results import Entry, write_json
from bench.rows import COMPARED_ROWS, REFERENCE_ROWS, ROW_NAMES, ROWS
from bench.shoal_rows import KEEP
from bench.tls import make_self_signed
from bench.tools import ensure_tools

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DURATION_S = 3.0


def _csv(choices: Sequence[str]) -> Any:
    """An argparse type: comma-separated names, each one of ``choices``."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3-second runs (smoke test)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--only", type=_csv(ROW_NAMES), help="rows, comma-separated")
    parser.add_argument("--protocols", type=_csv(PROTOCOLS), default=list(PROTOCOLS))
    parser.add_argument("--shapes", type=_csv(SHAPES), default=list(SHAPES))
    parser.add_argument("--rate", type=int, default=1000, help="total req/s of the rate shape")
    parser.add_argument(
        "--h1-rate-tool", choices=("wrk", "h2load"), default="wrk", help="tool for h1 at rate"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run, wait up to S seconds for the machine to be idle (shared hosts)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="before each measured run, the same load for S seconds, not counted (0: none)",
    )
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/<ts>.json)")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION_S
    if args.rate % 10:
        parser.error("--rate must be a multiple of 10 (spread over 10 connections)")
    return args


def _cpus() -> tuple[int | None, int | None, int | None, str]:
    """(server core, load-generator core, backend core, note) for this machine."""
    available = sorted(os.sched_getaffinity(0))
    if SERVER_CPU in available and LOADGEN_CPU in available:
        note = (
            f"pinning: server under test on core {SERVER_CPU}; load generator and the proxy "
            f"rows' backend nginx share core {BACKEND_CPU} (the backend is far faster than any "
            "proxy measured, but it does take cycles from the load generator); in the 'direct' "
            f"row the backend is the server under test, on core {SERVER_CPU}"
        )
        return SERVER_CPU, LOADGEN_CPU, BACKEND_CPU, note
    return None, None, None, f"pinning: off (cores {available} lack {SERVER_CPU} and {LOADGEN_CPU})"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so that every ``finally`` stops its servers."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the process exit code."""
    args = parse_args(argv)
    if args.keep:
        os.environ[KEEP] = "1"  # Shoal's rows keep their own directories too
    console = Console(width=None if sys.stdout.isatty() else 200)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A shell starts background jobs with SIGINT ignored; we want Ctrl-C / kill -INT to stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tools = ensure_tools(install=not args.no_install)
    if not tools.has("taskset"):
        console.print("taskset missing: cannot pin processes; install util-linux")
        return 2
    server_cpu, loadgen_cpu, backend_cpu, pin_note = _cpus()
    rows = [r for r in ROWS if args.only is None or r.name in args.only]
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    console.print(
        f"shoal bench: {len(rows)} rows x {args.protocols} x {args.shapes}, "
        f"{args.duration:g}s per run, rate shape {args.rate} req/s",
        highlight=False,
    )
    console.print(pin_note, highlight=False)
    plan = Plan(
        protocols=args.protocols,
        shapes=args.shapes,
        duration_s=args.duration,
        rate=args.rate,
        h1_rate_tool=args.h1_rate_tool,
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        backend_cpu=backend_cpu,
        wait_quiet_s=args.wait_quiet,
        warmup_s=args.warmup,
    )

    def progress(e: Entry) -> None:
        rps = "" if e.rps is None else f"{e.rps:,.0f} req/s"
        line = f"  {e.row:16} {e.protocol:4} {e.shape:10} {e.status:6} {rps:>14}  {e.note}"
        console.print(line, highlight=False)

    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    entries: list[Entry] = []
    interrupted = False
    t0 = time.monotonic()
    try:
        tls = make_self_signed(workdir)
        for row in rows:
            console.print(f"[bold]{row.name}[/bold]: {row.description}")
            entries += measure_row(
                row, plan, tools=tools, workdir=workdir, tls=tls, progress=progress
            )
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted: servers stopped; reporting what was measured")
    finally:
        if args.keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = compute_ratios(entries, COMPARED_ROWS, REFERENCE_ROWS)
    caveats = [
        pin_note,
        "latency at the fixed rate is measured from the moment a request is sent (h2load "
        "--rps, wrk paced by pace.lua): no coordinated-omission correction as in wrk2",
        "cpu s = user+system time of the server-under-test's process tree during the run "
        "(for proxies the backend's CPU is not included)",
    ]
    print_report(console, entries, ratios, caveats)
    if args.markdown:
        print(markdown_table(entries), flush=True)
    meta = {
        "started": started.isoformat(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "duration_s": args.duration,
        "rate": args.rate,
        "interrupted": interrupted,
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load_at_start,
        "pinning": {"server": server_cpu, "loadgen": loadgen_cpu, "backend": backend_cpu},
        "tools": tools.versions,
        "argv": list(sys.argv if argv is None else argv),
    }
    output = args.output or RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json(output, meta, entries, ratios)
    console.print(f"results written to {output}", highlight=False)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
