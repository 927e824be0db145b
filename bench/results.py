"""The records a benchmark run produces, and how they are saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "skipped", "error", "not available"]


@dataclass(kw_only=True)
class Entry:
    """One measurement (row x protocol x shape), or why there is none.

    A row that could not start at all is one entry with ``protocol`` and ``shape`` set to "*".
    ``cpu_s`` is the CPU time (user + system) of the server-under-test's process tree during
    the run; ``cpu_us_per_req`` divides it by the requests completed. ``backend_cpu_s`` and
    ``loadgen_cpu_s`` are the same for the backend and the load generator, ``other_cpu_s`` what
    the rest of the machine used meanwhile (noise from processes outside the benchmark).
    """

    row: str
    protocol: str
    shape: str
    status: Status = "ok"
    note: str = ""
    tool: str | None = None
    requests: int | None = None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    cpu_s: float | None = None
    cpu_us_per_req: float | None = None
    backend_cpu_s: float | None = None
    loadgen_cpu_s: float | None = None
    other_cpu_s: float | None = None
    command: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ratio:
    """A compared row against a reference row, for one protocol and shape.

    ``rps_ratio`` > 1 means the compared row served more; ``p99_ratio`` > 1 means its p99
    latency was higher (worse).
    """

    row: str
    reference: str
    protocol: str
    shape: str
    rps_ratio: float | None
    p99_ratio: float | None


def write_json(path: Path, meta: dict[str, Any], entries: list[Entry], ratios: list[Ratio]) -> None:
    """Write the run's metadata, entries and ratios as one JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "entries": [asdict(e) for e in entries],
        "ratios": [asdict(r) for r in ratios],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
