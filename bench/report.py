"""The printed report: one table of measurements, one of ratios for the compared rows."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench.results import Entry, Ratio


def compute_ratios(
    entries: Sequence[Entry], compared: Sequence[str], references: Sequence[str]
) -> list[Ratio]:
    """Ratios of each compared row to each reference row, per protocol and shape.

    Only successful measurements are paired; a ratio is None when a side lacks the figure
    or the reference figure is zero.
    """
    ok = {(e.row, e.protocol, e.shape): e for e in entries if e.status == "ok"}
    ratios: list[Ratio] = []
    for (row, protocol, shape), entry in ok.items():
        if row not in compared:
            continue
        for reference in references:
            if reference == row:
                continue
            ref = ok.get((reference, protocol, shape))
            if ref is None:
                continue
            ratios.append(
                Ratio(
                    row=row,
                    reference=reference,
                    protocol=protocol,
                    shape=shape,
                    rps_ratio=_ratio(entry.rps, ref.rps),
                    p99_ratio=_ratio(entry.p99_ms, ref.p99_ms),
                )
            )
    return ratios


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def entries_table(entries: Sequence[Entry], title: str) -> Table:
    """A rich table with one line per measurement (or per reason there is none).

    "cpu s" is the server under test's CPU time during the run, "other cpu s" what processes
    outside the benchmark used meanwhile (noise).
    """
    table = Table(title=title, title_justify="left")
    for name in ("row", "proto", "shape", "tool"):
        table.add_column(name)
    for name in ("req/s", "p50 ms", "p99 ms", "errors", "cpu s", "cpu µs/req", "other cpu s"):
        table.add_column(name, justify="right")
    table.add_column("note")
    for e in entries:
        if e.status != "ok" or e.protocol == "*":
            blanks = [""] * 8
            label = "note" if e.status == "ok" else e.status
            table.add_row(e.row, e.protocol, e.shape, *blanks, f"{label}: {e.note}")
            continue
        table.add_row(
            e.row,
            e.protocol,
            e.shape,
            e.tool or "",
            _num(e.rps),
            _num(e.p50_ms, 3),
            _num(e.p99_ms, 3),
            _num(e.errors),
            _num(e.cpu_s, 2),
            _num(e.cpu_us_per_req, 0),
            _num(e.other_cpu_s, 2),
            e.note,
        )
    return table


def ratios_table(ratios: Sequence[Ratio]) -> Table:
    """A rich table of req/s and p99 ratios of the compared rows to the references."""
    table = Table(title="ratios (compared / reference)", title_justify="left")
    for name in ("row", "vs", "proto", "shape"):
        table.add_column(name)
    table.add_column("req/s ratio", justify="right")
    table.add_column("p99 ratio", justify="right")
    for r in ratios:
        table.add_row(
            r.row, r.reference, r.protocol, r.shape, _num(r.rps_ratio, 2), _num(r.p99_ratio, 2)
        )
    return table


def print_report(
    console: Console, entries: Sequence[Entry], ratios: Sequence[Ratio], caveats: Sequence[str]
) -> None:
    """Print the measurements, the ratios (if any) and the caveats."""
    console.print(entries_table(entries, "results"))
    if ratios:
        console.print(ratios_table(ratios))
    else:
        console.print("ratios: none (no compared row produced numbers)")
    for caveat in caveats:
        console.print(f"- {caveat}", highlight=False)


def markdown_table(entries: Sequence[Entry]) -> str:
    """The measurements as a GitHub markdown table (for bench/README.md)."""
    head = "| row | proto | shape | tool | req/s | p50 ms | p99 ms | errors | cpu s | cpu µs/req |"
    head += " other cpu s | note |\n|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|\n"
    lines = []
    for e in entries:
        if e.status != "ok" or e.protocol == "*":
            label = "note" if e.status == "ok" else e.status
            lines.append(
                f"| {e.row} | {e.protocol} | {e.shape} |" + " |" * 8 + f" {label}: {e.note} |"
            )
            continue
        cells = [
            e.row,
            e.protocol,
            e.shape,
            e.tool or "",
            _num(e.rps),
            _num(e.p50_ms, 2),
            _num(e.p99_ms, 2),
            _num(e.errors),
            _num(e.cpu_s, 2),
            _num(e.cpu_us_per_req, 0),
            _num(e.other_cpu_s, 1),
            e.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
