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

A request's :class:`Entry` holds its facts raw as they become known (bytes undecoded, times
unrounded, who answered as the endpoint itself); entries are turned into lines, and written in
one write, every half second or :data:`BATCH` entries. A request so costs a few attribute
stores, not a system call, and the lines are made together in one tight loop (made one by one
between requests, the same work took about twice the CPU). A file opened for appending takes
whole writes from several processes (gateway workers) without mixing lines. ``sample`` keeps
that share of the requests, chosen by trace id: every hop of a kept request logs it.
``line_format`` ``text`` writes each line as :func:`text_line` instead: the same fields, for
people and ``grep`` rather than for log pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from shoal.http.refusal import CAUSE_HEADER
from shoal.mesh.forward import Forwarded
from shoal.mesh.h2exchange import H2Exchange

if TYPE_CHECKING:
    from shoal.http.trace import Span
    from shoal.mesh.h1server import Exchange
    from shoal.mesh.otlp import SpanExport
    from shoal.resources.endpoint import Endpoint

log = logging.getLogger(__name__)

FLUSH_EVERY = 0.5  # seconds
BATCH = 256  # entries gathered before they are written anyway
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


_q = encode_basestring_ascii  # (C) a str as a JSON string, as json.dumps writes it


class Entry:
    """One request's access-log facts, stored raw by the proxy as the request goes (a class
    attribute is the value of a fact not known). :meth:`AccessLog.fields` makes the line's
    fields from it, when its batch is written."""

    listener: str | None = None  # a router's: "inbound" or "outbound"
    authority: str | bytes | None = None
    rid: bytes | None = None  # x-request-id
    span: Span | None = None  # this hop's
    bytes_in: int | None = None  # the request's Content-Length
    upstream: float | None = None  # seconds until the upstream's head came
    route: str | None = None
    endpoint: Endpoint | None = None  # who answered
    attempts: int | None = None
    status: int | None = None
    cause: str | None = None
    caller: str | None = None  # a router's inbound: the calling workload's SPIFFE id
    bytes_out: int | None = None  # body bytes relayed
    ended = 0.0  # epoch seconds

    def __init__(
        self, started: float, client: str | None, protocol: str, method: bytes, target: bytes
    ) -> None:
        self.started = started  # epoch seconds
        self.client = client
        self.protocol = protocol
        self.method = method
        self.target = target  # the path with its query, as received

    @classmethod
    def of(cls, exchange: Exchange | H2Exchange) -> Entry:
        """The entry of the request ``exchange`` carries, which comes now."""
        head, peer = exchange.head, exchange.peer
        protocol = "HTTP/2" if isinstance(exchange, H2Exchange) else "HTTP/1.1"
        return cls(time.time(), peer[0] if peer else None, protocol, head.method, head.target)

    def answered(self, status: int, cause: str | None = None) -> None:
        """The proxy answered ``status`` itself (``cause``: its ``x-shoal-cause``)."""
        self.status, self.cause = status, cause or None


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


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
        self._line = self.json_line if line_format == "json" else self._text_line
        self.sink = sink  # None: no line is written (spans only)
        self.spans = spans  # each kept request's span goes there too
        self.path = path  # a file's, cut at MAX_BYTES (None: standard output)
        self.component = component
        self._component = _q(component)
        self._keep_below = int(sample * 0x1_0000_0000)  # of a trace id's last 32 bits
        self._keep_all = sample >= 1.0
        self.clock = clock
        self._stamp = _UtcStamp()
        self._entries: list[Entry] = []

    def kept(self, trace_id: str) -> bool:
        """Whether the request of trace ``trace_id`` is logged (the same answer on every hop)."""
        return self._keep_below > 0xFFFF_FFFF or int(trace_id[-8:], 16) < self._keep_below

    def done(self, entry: Entry) -> None:
        """The request of ``entry`` is over: log it if kept."""
        span = entry.span
        if self._keep_all or self.kept(span.trace_id if span is not None else "ffffffff"):
            entry.ended = self.clock()
            self._entries.append(entry)
            if len(self._entries) >= BATCH:
                self.flush()

    def fields(self, entry: Entry) -> dict[str, Any]:
        """The line's fields of ``entry``, in the line's order (null: not known)."""
        span, endpoint, upstream = entry.span, entry.endpoint, entry.upstream
        rid = entry.rid
        fields = {
            "time": self._stamp(entry.started),
            "component": self.component,
            "request_id": rid.decode("latin-1") if rid is not None else None,
            "trace_id": span.trace_id if span is not None else None,
            "span_id": span.span_id if span is not None else None,
            "parent_span_id": span.parent_id if span is not None else None,
            "client": entry.client,
            "protocol": entry.protocol,
            "method": entry.method.decode("latin-1"),
            "authority": _text(entry.authority),
            "path": entry.target.decode("latin-1"),
            "status": entry.status,
            "cause": entry.cause,
            "route": entry.route,
            "service": endpoint.service if endpoint is not None else None,
            "revision": endpoint.revision if endpoint is not None else None,
            "instance": endpoint.id if endpoint is not None else None,
            "node": endpoint.node if endpoint is not None else None,
            "attempts": entry.attempts,
            "bytes_in": entry.bytes_in,
            "bytes_out": entry.bytes_out,
            "duration_ms": round((entry.ended - entry.started) * 1000, 3),
            "upstream_ms": round(upstream * 1000, 3) if upstream is not None else None,
        }
        if entry.listener is not None:  # a router's
            fields["listener"] = entry.listener
            fields["caller"] = entry.caller
        return fields

    def json_line(self, entry: Entry) -> str:
        """:meth:`fields` as one JSON object, written straight from ``entry``: what
        ``json.dumps(self.fields(entry))`` writes (compact), at half the cost."""
        span, endpoint, rid, upstream = entry.span, entry.endpoint, entry.rid, entry.upstream
        status, cause, route, attempts = entry.status, entry.cause, entry.route, entry.attempts
        bytes_in, bytes_out, client = entry.bytes_in, entry.bytes_out, entry.client
        authority = _text(entry.authority)
        if span is None:
            ids = '"trace_id":null,"span_id":null,"parent_span_id":null'
        else:
            parent = span.parent_id
            ids = (
                f'"trace_id":{_q(span.trace_id)},"span_id":{_q(span.span_id)},'
                f'"parent_span_id":{"null" if parent is None else _q(parent)}'
            )
        if endpoint is None:
            who = '"service":null,"revision":null,"instance":null,"node":null'
        else:
            who = (
                f'"service":{_q(endpoint.service)},"revision":{_q(endpoint.revision)},'
                f'"instance":{_q(endpoint.id)},"node":{_q(endpoint.node)}'
            )
        line = (
            f'{{"time":"{self._stamp(entry.started)}","component":{self._component},'
            f'"request_id":{"null" if rid is None else _q(rid.decode("latin-1"))},{ids},'
            f'"client":{"null" if client is None else _q(client)},'
            f'"protocol":{_q(entry.protocol)},"method":{_q(entry.method.decode("latin-1"))},'
            f'"authority":{"null" if authority is None else _q(authority)},'
            f'"path":{_q(entry.target.decode("latin-1"))},'
            f'"status":{"null" if status is None else int(status)},'
            f'"cause":{"null" if cause is None else _q(cause)},'
            f'"route":{"null" if route is None else _q(route)},{who},'
            f'"attempts":{"null" if attempts is None else int(attempts)},'
            f'"bytes_in":{"null" if bytes_in is None else int(bytes_in)},'
            f'"bytes_out":{"null" if bytes_out is None else int(bytes_out)},'
            f'"duration_ms":{round((entry.ended - entry.started) * 1000, 3)!r},'
            f'"upstream_ms":{"null" if upstream is None else repr(round(upstream * 1000, 3))}'
        )
        if entry.listener is not None:
            caller = entry.caller
            line += (
                f',"listener":{_q(entry.listener)},'
                f'"caller":{"null" if caller is None else _q(caller)}'
            )
        return line + "}"

    def _text_line(self, entry: Entry) -> str:
        return text_line(self.fields(entry))

    def flush(self) -> None:
        """Make the lines (and spans) of what is gathered; write the lines in one write."""
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        if self.spans is not None:
            for entry in entries:
                self.spans.export(self.fields(entry), entry.started, entry.ended)
        if self.sink is None:
            return
        line = self._line
        data = ("\n".join([line(entry) for entry in entries]) + "\n").encode()
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


def served_by(entry: Entry, result: Forwarded) -> None:
    """Put in ``entry`` who answered a forwarded request, after how many attempts, and how."""
    response = result.response
    entry.endpoint, entry.attempts, entry.status = result.endpoint, result.attempts, response.status
    if response.status >= 400:  # a router's own answer says why
        cause = next((v for n, v in response.headers if n == CAUSE_HEADER), None)
        if cause is not None:
            entry.cause = cause.decode("latin-1")


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
