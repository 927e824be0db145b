"""Access logs: one JSON object per line for each request a proxy (the gateway, a router's
inbound and outbound listeners) handled — Envoy's access log, in JSON.

A line: ``time`` (UTC, ms), ``component``, ``request_id``, ``trace_id``/``span_id``/
``parent_span_id`` (W3C, :mod:`shoal.http.trace`: the same trace on every hop, each hop's span
the next one's parent), ``client``, ``protocol``, ``method``, ``authority``, ``path`` (with the
query, as received), ``status``, ``cause`` (``x-shoal-cause`` of an answer Shoal made), the
``service``/``revision``/``instance``/``node`` that answered, ``attempts``, ``bytes_in`` (the
request's Content-Length; null when streamed), ``bytes_out`` (body bytes relayed),
``duration_ms`` (to the end of the answer) and ``upstream_ms`` (to the upstream's head). Absent
values are null.

Lines are gathered and written in one write every half second (or 64 KiB), so a request costs
the building of its line, not a system call; a file opened for appending takes whole writes
from several processes (gateway workers) without mixing lines. ``sample`` keeps that share of
the requests, chosen by trace id: every hop of a kept request logs it. ``line_format`` ``text``
writes each line as :func:`text_line` instead: the same fields, for people and ``grep`` rather
than for log pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring_ascii,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from shoal.http.refusal import CAUSE_HEADER
from shoal.mesh.forward import Forwarded

if TYPE_CHECKING:
    from shoal.mesh.otlp import SpanExport

log = logging.getLogger(__name__)

Entry = dict[str, Any] | None
"""A request's access-log fields as they become known; None when nothing is logged (a proxy
then gathers nothing)."""

FLUSH_EVERY = 0.5  # seconds
FLUSH_AT = 64 * 1024  # bytes gathered
MAX_BYTES = 10 * 1024 * 1024  # a file is cut past this, its previous part kept as .1
OFF = "off"
STDOUT = "-"


class _UtcStamp:
    """``2026-12-05T14:03:07.123Z`` for an epoch time, the second's part made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def _encoder() -> Callable[[dict[str, Any]], str]:
    """A JSON encoder of entries made once (``json.dumps`` builds one per call): the C one
    behind the standard library's when there is one."""
    if c_make_encoder is None:  # (a Python built without the _json accelerator)
        return json.JSONEncoder(separators=(",", ":")).encode
    chunks = c_make_encoder(
        None, _unencodable, encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return lambda entry: "".join(chunks(entry, 0))


def _unencodable(value: object) -> object:
    raise TypeError(f"not JSON: {value!r}")


_encode = _encoder()

FORMATS = ("json", "text")
_TEXT_TAIL = (  # the text format's fields after the request line, as name=value
    ("rid", "request_id"),
    ("trace", "trace_id"),
    ("span", "span_id"),
    ("parent", "parent_span_id"),
    ("service", "service"),
    ("revision", "revision"),
    ("instance", "instance"),
    ("node", "node"),
    ("route", "route"),
    ("cause", "cause"),
    ("attempts", "attempts"),
    ("upstream_ms", "upstream_ms"),
    ("listener", "listener"),
    ("caller", "caller"),
)


def text_line(entry: dict[str, Any]) -> str:
    """An entry as one space-separated line, nginx-like: time, component, client, the quoted
    request (``METHOD authority path protocol``), status, bytes out, duration in ms, then
    ``name=value`` for each other field that has a value (``"`` in the request becomes
    ``%22``; values are ids, names and numbers, with no space)."""
    get = entry.get
    request = f"{get('method')} {get('authority') or '-'} {get('path')} {get('protocol')}"
    head = (
        f"{get('time')} {get('component')} {get('client') or '-'} "
        f'"{request.replace(chr(34), "%22")}" {get("status") or "-"} '
        f"{get('bytes_out') or 0} {get('duration_ms')}"
    )
    tail = [f"{name}={entry[key]}" for name, key in _TEXT_TAIL if entry.get(key) is not None]
    return " ".join((head, *tail))


class AccessLog:
    """Gathers a proxy's access-log lines and writes them to ``sink`` in batches."""

    def __init__(
        self,
        sink: BinaryIO | None,
        component: str,
        *,
        sample: float = 1.0,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
        spans: SpanExport | None = None,
        line_format: str = "json",
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be within 0..1 (got {sample})")
        if line_format not in FORMATS:
            raise ValueError(f"line format must be {' or '.join(FORMATS)} (got {line_format!r})")
        self._line = _encode if line_format == "json" else text_line
        self.sink = sink  # None: no line is written (spans only)
        self.spans = spans  # each kept request's span goes there too
        self.path = path  # a file's, cut at MAX_BYTES (None: standard output)
        self.component = component
        self._keep_below = int(sample * 0x1_0000_0000)  # of a trace id's last 32 bits
        self._keep_all = sample >= 1.0
        self.clock = clock
        self._stamp = _UtcStamp()
        self._lines: list[str] = []
        self._size = 0

    def kept(self, trace_id: str) -> bool:
        """Whether the request of trace ``trace_id`` is logged (the same answer on every hop)."""
        return self._keep_below > 0xFFFF_FFFF or int(trace_id[-8:], 16) < self._keep_below

    def entry(self, started: float) -> dict[str, Any]:
        """A new line's fields, for a request that came at ``started`` (epoch seconds)."""
        return {"time": self._stamp(started), "component": self.component}

    def done(self, entry: dict[str, Any], started: float) -> None:
        """The request of ``entry``, which came at ``started``, is over: log it if kept."""
        if self._keep_all or self.kept(entry.get("trace_id") or "ffffffff"):
            ended = self.clock()
            entry["duration_ms"] = round((ended - started) * 1000, 3)
            if self.sink is not None:
                self.record(entry)
            if self.spans is not None:
                self.spans.export(entry, started, ended)

    def record(self, entry: dict[str, Any]) -> None:
        """Add a request's line (written with the next batch)."""
        line = self._line(entry)
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is gathered, in one write."""
        if not self._lines or self.sink is None:
            return
        data = ("\n".join(self._lines) + "\n").encode()
        self._lines.clear()
        self._size = 0
        try:
            self.sink.write(data)
            self.sink.flush()
            if self.path is not None and os.fstat(self.sink.fileno()).st_size > MAX_BYTES:
                cut_file(self.path)
        except OSError as e:  # a full disk must not stop the proxy: the lines are dropped
            log.warning("access log not written: %s", e)

    def close(self) -> None:
        """Write the rest; close a file (never standard output)."""
        self.flush()
        if self.path is not None and self.sink is not None:
            self.sink.close()
        if self.spans is not None:
            self.spans.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Write a batch every :data:`FLUSH_EVERY` seconds until ``stop`` (or cancelled), then
        the rest."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_EVERY):
                        await stop.wait()
                self.flush()
        finally:
            self.flush()


def served_by(entry: dict[str, Any], result: Forwarded) -> None:
    """Put in ``entry`` who answered a forwarded request, after how many attempts, and how."""
    endpoint, response = result.endpoint, result.response
    entry.update(
        service=endpoint.service,
        revision=endpoint.revision,
        instance=endpoint.id,
        node=endpoint.node,
        attempts=result.attempts,
        status=response.status,
    )
    if response.status >= 400:  # a router's own answer says why
        cause = next((v for n, v in response.headers if n == CAUSE_HEADER), None)
        if cause is not None:
            entry["cause"] = cause.decode("latin-1")


def cut_file(path: Path, rotated: str = ".1") -> None:
    """Move ``path``'s content to ``path`` + ``rotated`` and empty it in place: whoever writes
    it keeps its file open (for appending) and goes on at its start (logrotate's
    ``copytruncate``; what is written between the copy and the cut is lost)."""
    shutil.copyfile(path, path.with_name(path.name + rotated))
    with path.open("r+b") as f:
        f.truncate(0)


def open_access_log(
    spec: str,
    component: str,
    *,
    sample: float = 1.0,
    otlp_endpoint: str | None = None,
    line_format: str = "json",
) -> AccessLog | None:
    """The access log ``spec`` names: a file (appended to), ``-`` (standard output) or ``off``;
    with ``otlp_endpoint``, each kept request's span is exported there too (see
    :mod:`shoal.mesh.otlp`). None when neither is wanted."""
    spans = None
    if otlp_endpoint:
        from shoal.mesh.otlp import SpanExport  # (the SDK loads only when asked for)

        spans = SpanExport(otlp_endpoint, component)
    if spec == OFF:
        return None if spans is None else AccessLog(None, component, sample=sample, spans=spans)
    if spec == STDOUT:
        return AccessLog(
            sys.stdout.buffer, component, sample=sample, spans=spans, line_format=line_format
        )
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = path.open("ab")
    with contextlib.suppress(OSError):
        path.chmod(0o600)  # client addresses and paths: the operator's only
    return AccessLog(
        sink, component, sample=sample, path=path, spans=spans, line_format=line_format
    )
