"""Parsers for the output of wrk and h2load: text in, numbers out (no I/O, no processes).

- ``parse_wrk`` reads ``wrk --latency`` output: requests/s, the 50% and 99% lines of the
  latency distribution, socket errors and non-2xx/3xx responses.
- ``parse_h2load`` reads h2load's summary: requests/s and request counters. h2load prints only
  min/max/mean/sd of latency, so percentiles come from its per-request ``--log-file``, read by
  ``parse_h2load_log`` (tab-separated: start µs since epoch, status, duration µs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class ParseError(ValueError):
    """The tool's output did not have the expected shape; the message quotes what is missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    """What one load run measured, as parsed from a tool's output."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    unparsed_status: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLog:
    """Latencies and status counts from an h2load ``--log-file``."""

    latencies_ms: list[float]
    failed_streams: int
    error_statuses: int
    unparsed_status: int


def duration_to_ms(text: str) -> float:
    """Convert a wrk/h2load duration like ``1.23ms``, ``850us``, ``2.5s`` or ``1m`` to ms."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if match is None:
        raise ParseError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 < q <= 100) of an ascending, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _search(pattern: str, text: str, what: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ParseError(f"no {what} in output (pattern {pattern!r})")
    return match


def parse_wrk(text: str) -> LoadResult:
    """Parse ``wrk --latency`` output."""
    done = _search(r"^\s*(\d+) requests in ([0-9.]+\w+),", text, "request count")
    rps = _search(r"^Requests/sec:\s*([0-9.]+)", text, "Requests/sec")
    p50 = _search(r"^\s*50%\s+(\S+)", text, "50% latency (was --latency given?)")
    p99 = _search(r"^\s*99%\s+(\S+)", text, "99% latency (was --latency given?)")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock is not None:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx is not None:
        errors += int(non2xx.group(1))
    return LoadResult(
        requests=int(done.group(1)),
        duration_s=duration_to_ms(done.group(2)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=duration_to_ms(p50.group(1)),
        p99_ms=duration_to_ms(p99.group(1)),
        errors=errors,
    )


def parse_h2load_log(text: str) -> RequestLog:
    """Parse an h2load ``--log-file``: latencies (ms, sorted) and status counts.

    Status -1 is a failed stream; 0 means the response completed but h2load recorded no status
    (its HTTP/1.1 parser does so when the status line has an empty reason phrase, as h11 and
    therefore hypercorn send); 400 and above count as errors.
    """
    latencies: list[float] = []
    failed = error_status = unparsed = 0
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status = int(parts[1])
        if status == -1:
            failed += 1
            continue
        if status == 0:
            unparsed += 1
        elif status >= 400:
            error_status += 1
        latencies.append(int(parts[2]) / 1000.0)
    latencies.sort()
    return RequestLog(
        latencies_ms=latencies,
        failed_streams=failed,
        error_statuses=error_status,
        unparsed_status=unparsed,
    )


def parse_h2load(text: str, log: RequestLog | None = None) -> LoadResult:
    """Parse h2load's summary; take percentiles (and status detail) from its request log.

    Errors are h2load's ``failed`` count (errored streams, timeouts and non-2xx/3xx answers),
    except for responses whose status h2load could not read (see ``parse_h2load_log``): those
    are reported as ``unparsed_status``, and only the log's failed streams and >= 400 statuses
    count as errors for them.
    """
    finished = _search(r"^finished in ([0-9.]+\w+), ([0-9.]+) req/s", text, "'finished in'")
    counts = _search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
        "'requests:' line",
    )
    done, failed = int(counts.group(3)), int(counts.group(5))
    errored, timeout = int(counts.group(6)), int(counts.group(7))
    errors = max(failed, errored + timeout)
    p50 = p99 = None
    unparsed = 0
    if log is not None:
        if log.latencies_ms:
            p50 = percentile(log.latencies_ms, 50)
            p99 = percentile(log.latencies_ms, 99)
        unparsed = log.unparsed_status
        if unparsed:
            errors = max(errored + timeout, log.failed_streams) + log.error_statuses
    return LoadResult(
        requests=done,
        duration_s=duration_to_ms(finished.group(1)) / 1000.0,
        rps=float(finished.group(2)),
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        unparsed_status=unparsed,
    )
