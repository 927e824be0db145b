"""HTTP/1.1 on the wire, sans-IO: heads parsed once and written back as bytes, bodies framed.

A proxy that forwards what it received must not rebuild a request from a library's decoded
objects (they percent-decode the query, refuse framing they did not choose, cap header sizes
of their own). Here the request target and header values stay the bytes that arrived; header
names are lower-cased (HTTP field names are case-insensitive, and every other part of Shoal
uses lower-case names). Parsing is llhttp's (Node.js's parser, through ``httptools``), which
also refuses request smuggling (``Content-Length`` with ``Transfer-Encoding``, duplicate
lengths) and bad bytes in the head.

A :class:`Reader` is fed bytes and returns events, in order:

- a :class:`RequestHead` or :class:`ResponseHead` (a ``1xx`` response is a head of its own,
  followed by :class:`End`, before the final one);
- :class:`Data` — a piece of body, de-chunked;
- :class:`End` — the message is complete; ``trailers`` holds a chunked body's trailer fields;
- :class:`Upgraded` — the connection now speaks another protocol (an ``Upgrade``/``CONNECT``
  request, a ``101`` response); ``rest`` are the bytes after the head, and the reader is done.

A response whose length is given by the connection closing (no ``Content-Length``, not
chunked) ends when :meth:`Reader.eof` is called. What a peer does wrong is a
:class:`ProtocolError` carrying the status to answer with and its ``x-shoal-cause``.

The writers (:func:`request_head`, :func:`response_head`, :class:`BodyWriter`) produce bytes;
the caller chooses the framing: the received ``Content-Length`` kept as it was, else chunked.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import httptools

from shoal.http.refusal import BAD_FRAMING, BAD_REQUEST, HEADERS_TOO_LARGE, URI_TOO_LONG

Fields = tuple[tuple[bytes, bytes], ...]

CRLF = b"\r\n"


class Framing(enum.Enum):
    """How a message's body is delimited on the wire."""

    NONE = "none"  # no body (a request without length, 204/304, a response to HEAD)
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # Transfer-Encoding: chunked, maybe with trailers
    CLOSE = "close"  # a response that ends when the connection closes


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Sizes a head may not exceed: the target (→ 414), all fields (→ 431), their count (→ 431).

    Field bytes are counted as ``len(name) + len(value) + 4`` per field, as the edge does.
    """

    max_target_bytes: int = 8 * 1024
    max_field_bytes: int = 60 * 1024
    max_field_count: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """What request and response heads share: version, fields (names lower-cased), framing."""

    version: bytes  # b"1.1" or b"1.0"
    fields: Fields
    framing: Framing
    content_length: int | None
    keep_alive: bool

    def get(self, name: bytes) -> bytes | None:
        """The first value of field ``name`` (lower-case), or None."""
        return _get(self.fields, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHead(Head):
    """A request line and its header fields, as received."""

    method: bytes
    target: bytes  # the raw request target: path and query exactly as sent

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for ``100 Continue`` before sending its body."""
        value = self.get(b"expect")
        return value is not None and value.lower() == b"100-continue"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead(Head):
    """A status line and its header fields, as received."""

    status: int
    reason: bytes

    @property
    def informational(self) -> bool:
        """A ``1xx`` head: the final response is still to come (``101`` ends the exchange)."""
        return 100 <= self.status < 200 and self.status != 101


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the body, de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The message is complete; a chunked body's trailer fields (names lower-cased)."""

    trailers: Fields = ()


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The connection switched protocols after this message; ``rest`` follows the head."""

    rest: bytes


Event = RequestHead | ResponseHead | Data | End | Upgraded


class ProtocolError(Exception):
    """The peer sent something that is not valid HTTP/1.1 (or over a limit): its fault.

    ``status`` and ``cause`` are what a server answers with (``x-shoal-cause``).
    """

    def __init__(self, status: int, cause: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause


def _get(fields: Fields, name: bytes) -> bytes | None:
    for key, value in fields:
        if key == name:
            return value
    return None


@dataclass(slots=True)
class _Message:
    """What the parser's callbacks collect for the message being read."""

    target: bytearray = field(default_factory=bytearray)
    reason: bytearray = field(default_factory=bytearray)
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    field_bytes: int = 0


class Reader:
    """Turns the bytes of one connection direction into events (see the module docstring).

    ``kind`` is what is read: requests (a server's side) or responses (a client's side). A
    client tells the reader which responses answer a ``HEAD`` with :meth:`expect_head`.
    """

    def __init__(
        self, kind: Literal["request", "response"], limits: HeadLimits = HeadLimits()
    ) -> None:
        self.kind = kind
        self.limits = limits
        self._parser = self._new_parser()
        self._events: list[Event] = []
        self._message = _Message()
        self._head_only = 0  # responses still to come that answer a HEAD
        self._done = False
        self._until_close = False
        self._error: ProtocolError | None = None
        self.in_head = False  # part of a head has been read, not all of it

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        if self.kind == "request":
            return httptools.HttpRequestParser(self)
        return httptools.HttpResponseParser(self)

    def expect_head(self) -> None:
        """The next response read answers a ``HEAD``: it has no body, whatever it announces."""
        self._head_only += 1

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` (any split of the stream); the events it completes."""
        if self._done:
            raise ProtocolError(400, BAD_REQUEST, "bytes after the connection switched protocols")
        while data:
            if self._head_only and self.kind == "response" and not self._until_close:
                data = self._feed_head_only(data)
            else:
                self._feed(data)
                data = b""
        out, self._events = self._events, []
        return out

    def eof(self) -> list[Event]:
        """The peer closed its side: ends a response delimited by the close; an error when a
        message was cut short."""
        if self._until_close:
            self._until_close = False
            self._done = True
            return [End()]
        if self._message.target or self._message.fields or self._message.reason:
            raise ProtocolError(400, BAD_REQUEST, "connection closed in the middle of a message")
        return []

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # Our own callback refused something (a limit): httptools wraps what it raised.
            error, self._error = self._error, None
            if error is None:
                raise
            raise error from None
        except httptools.HttpParserUpgrade as e:
            self._done = True
            self._events.append(Upgraded(data[int(e.args[0]) :]))
        except httptools.HttpParserInvalidURLError as e:
            raise ProtocolError(400, BAD_REQUEST, f"bad request target: {e}") from None
        except httptools.HttpParserError as e:
            status, cause = _classify(str(e).lower())
            raise ProtocolError(status, cause, f"bad HTTP/1.1: {e}") from None

    def _feed_head_only(self, data: bytes) -> bytes:
        """Feed one head of a response to a HEAD (llhttp would wait for the announced body);
        return what follows it. A fresh parser reads the next response."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self._feed(data)  # only part of the head: the parser keeps it
            return b""
        head, rest = data[: end + 4], data[end + 4 :]
        self._feed(head)
        if not self._events or not isinstance(self._events[-1], End):
            # Not informational: the parser now waits for a body that will never come.
            self._parser = self._new_parser()
            self._message = _Message()
            self._events.append(End())
        return rest

    def _refuse(self, status: int, cause: str, message: str) -> None:
        """Stop parsing from inside a callback; :meth:`_feed` raises the error."""
        self._error = ProtocolError(status, cause, message)
        raise self._error

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._message = _Message()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._message.target += url
        if len(self._message.target) > self.limits.max_target_bytes:
            self._refuse(414, URI_TOO_LONG, "request target too long")

    def on_status(self, status: bytes) -> None:
        self._message.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        m = self._message
        m.field_bytes += len(name) + len(value) + 4
        if m.field_bytes > self.limits.max_field_bytes:
            self._refuse(431, HEADERS_TOO_LARGE, "header fields too large")
        if len(m.fields) >= self.limits.max_field_count:
            self._refuse(431, HEADERS_TOO_LARGE, "too many header fields")
        m.fields.append((name.lower(), value.rstrip(b" \t")))  # trailing whitespace is not value

    def on_headers_complete(self) -> None:
        self.in_head = False
        m = self._message
        fields = tuple(m.fields)
        m.fields, m.field_bytes = [], 0  # what follows the head: trailer fields
        p = self._parser
        version = p.get_http_version().encode()
        length = _content_length(fields)
        chunked = _chunked(fields)
        if isinstance(p, httptools.HttpRequestParser):
            refused = _coding_error(fields, version)
            if refused is not None:
                self._refuse(*refused)
            framing = Framing.CHUNKED if chunked else Framing.LENGTH if length else Framing.NONE
            self._events.append(
                RequestHead(
                    method=p.get_method(),
                    target=bytes(m.target),
                    version=version,
                    fields=fields,
                    framing=framing,
                    content_length=length,
                    keep_alive=p.should_keep_alive(),
                )
            )
            return
        status = p.get_status_code()
        if self._head_only or status in (204, 304) or 100 <= status < 200:
            framing = Framing.NONE
        elif chunked:
            framing = Framing.CHUNKED
        elif length is not None:
            framing = Framing.LENGTH if length else Framing.NONE
        else:
            framing = Framing.CLOSE
            self._until_close = True
        if self._head_only and not 100 <= status < 200:
            self._head_only -= 1
        self._events.append(
            ResponseHead(
                status=status,
                reason=bytes(m.reason),
                version=version,
                fields=fields,
                framing=framing,
                content_length=length,
                keep_alive=p.should_keep_alive() and framing is not Framing.CLOSE,
            )
        )

    def on_body(self, body: bytes) -> None:
        if body:
            self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._events.append(End(tuple(self._message.fields)))
        self._message = _Message()


def _classify(error: str) -> tuple[int, str]:
    """The status and cause for an llhttp error (RFC 9112 §6.1: a transfer coding the server
    does not understand is 501)."""
    if "transfer-encoding" in error:
        return (400 if "content-length" in error else 501), BAD_FRAMING
    return 400, BAD_REQUEST


def _coding_error(fields: Fields, version: bytes) -> tuple[int, str, str] | None:
    """A request's Transfer-Encoding must be exactly ``chunked``, once, in HTTP/1.1: llhttp
    also takes ``gzip, chunked`` and HTTP/1.0, which a proxy must not pass on."""
    codings = [v for n, v in fields if n == b"transfer-encoding"]
    if not codings:
        return None
    if version != b"1.1":
        return 400, BAD_FRAMING, "Transfer-Encoding in an HTTP/1.0 request"
    if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
        return 501, BAD_FRAMING, "transfer coding other than chunked"
    return None


def _content_length(fields: Fields) -> int | None:
    value = _get(fields, b"content-length")
    return None if value is None else int(value)  # llhttp checked it is one decimal number


def _chunked(fields: Fields) -> bool:
    value = _get(fields, b"transfer-encoding")
    return value is not None and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def _fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in fields)


def request_head(method: bytes, target: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The bytes of an HTTP/1.1 request head (``fields`` carry the framing header, if any)."""
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, _fields(fields))


def response_head(status: int, reason: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The bytes of an HTTP/1.1 status line and fields (with their framing header, if any)."""
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, _fields(fields))


class BodyWriter:
    """Frames a body for the wire: as it is (a known length) or chunked (with trailers)."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked

    def data(self, data: bytes) -> bytes:
        """A piece of body as it goes on the wire (an empty piece writes nothing)."""
        if not self.chunked or not data:
            return data
        return b"%x\r\n%s\r\n" % (len(data), data)

    def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """The end of the body: the last chunk and the trailers, when chunked."""
        return b"0\r\n%s\r\n" % _fields(trailers) if self.chunked else b""
