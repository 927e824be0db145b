"""The sans-IO HTTP/1.1 reader and writers: bytes in, events out, bytes back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.http.h1 import (
    BodyWriter,
    Data,
    End,
    Event,
    Framing,
    HeadLimits,
    ProtocolError,
    Reader,
    RequestHead,
    ResponseHead,
    Upgraded,
    request_head,
    response_head,
)


def read(kind: str, *pieces: bytes) -> list[Event]:
    """Every event of feeding ``pieces`` one after the other."""
    reader = Reader("request" if kind == "request" else "response")
    return [e for p in pieces for e in reader.feed(p)]


def body_of(events: list[Event]) -> bytes:
    """The body bytes among ``events``."""
    return b"".join(e.data for e in events if isinstance(e, Data))


def test_request_target_and_field_values_stay_the_bytes_that_arrived() -> None:
    """The raw target (percent-escapes, '+', '#'-escapes) and values are not decoded; names are
    lower-cased."""
    target = b"/a%2Fb/%E2%9C%93?p=100%25&y=%2F%3F%26%3D&h=%23frag&x=a%20b+c"
    events = read("request", b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nX-Odd: A%20B \r\n\r\n")
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.target == target
    assert head.method == b"GET"
    assert head.fields == ((b"host", b"h"), (b"x-odd", b"A%20B"))
    assert head.framing is Framing.NONE
    assert events[1:] == [End()]


def test_chunked_request_body_is_dechunked_with_its_trailers() -> None:
    """A chunked upload yields its data and its trailer fields, then the next pipelined request."""
    events = read(
        "request",
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n3\r\n wo\r\n0\r\nX-Sum: abc\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    head = events[0]
    assert isinstance(head, RequestHead) and head.framing is Framing.CHUNKED
    assert body_of(events) == b"hello wo"
    ends = [e for e in events if isinstance(e, End)]
    assert ends[0] == End(((b"x-sum", b"abc"),))
    assert isinstance(events[-2], RequestHead) and events[-2].target == b"/next"


def test_length_and_chunked_together_is_refused_as_bad_framing() -> None:
    """Content-Length with Transfer-Encoding (request smuggling) is a 400 bad_framing."""
    with pytest.raises(ProtocolError) as e:
        read(
            "request",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        )
    assert (e.value.status, e.value.cause) == (400, "bad_framing")


@pytest.mark.parametrize(
    ("fields", "version", "expected"),
    [
        (b"Content-Length: 3\r\nContent-Length: 4\r\n", b"1.1", (400, "bad_request")),
        (b"Content-Length: 3x\r\n", b"1.1", (400, "bad_request")),
        (b"Transfer-Encoding: chunked\r\n", b"1.0", (400, "bad_framing")),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"1.1", (501, "bad_framing")),
        (b"Transfer-Encoding: chunked\r\n" * 2, b"1.1", (501, "bad_framing")),
        (b"Transfer-Encoding: identity\r\n", b"1.1", (501, "bad_framing")),
    ],
)
def test_framing_a_proxy_must_not_pass_on(
    fields: bytes, version: bytes, expected: tuple[int, str]
) -> None:
    """Bad lengths are 400 bad_request; a transfer coding other than exactly one ``chunked``
    in HTTP/1.1 is bad_framing: 400 in HTTP/1.0, else 501 (RFC 9112 §6.1)."""
    with pytest.raises(ProtocolError) as e:
        read("request", b"POST / HTTP/" + version + b"\r\nHost: h\r\n" + fields + b"\r\n")
    assert (e.value.status, e.value.cause) == expected


def test_in_head_from_the_first_byte_of_a_head_to_its_end() -> None:
    """``in_head`` tells a server a head has begun but not ended (its deadline runs)."""
    reader = Reader("request")
    assert not reader.in_head
    reader.feed(b"GE")
    assert reader.in_head
    reader.feed(b"T / HTTP/1.1\r\nHost: h\r\n")
    assert reader.in_head
    assert isinstance(reader.feed(b"\r\n")[0], RequestHead)
    assert not reader.in_head


def test_head_limits_answer_414_and_431() -> None:
    """A target or field block over the limits is refused with the status the edge uses."""
    limits = HeadLimits(max_target_bytes=10, max_field_bytes=100, max_field_count=2)
    with pytest.raises(ProtocolError) as e:
        Reader("request", limits).feed(b"GET /" + b"a" * 10 + b" HTTP/1.1\r\n\r\n")
    assert e.value.status == 414
    with pytest.raises(ProtocolError) as e:
        Reader("request", limits).feed(b"GET / HTTP/1.1\r\nX: " + b"v" * 100 + b"\r\n\r\n")
    assert (e.value.status, e.value.cause) == (431, "headers_too_large")
    with pytest.raises(ProtocolError) as e:
        Reader("request", limits).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    assert e.value.status == 431


def test_a_32_kib_field_passes_under_the_edge_limits() -> None:
    """The default limits (60 KiB of fields) let a 32 KiB header through, split anywhere."""
    big = b"v" * 32 * 1024
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + big + b"\r\n\r\n"
    events = read("request", raw[:9000], raw[9000:20000], raw[20000:])
    head = events[0]
    assert isinstance(head, RequestHead) and head.get(b"x-big") == big


def test_expect_continue_is_seen_on_the_head() -> None:
    """A head with Expect: 100-continue says so before any body arrives."""
    events = read(
        "request",
        b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-Continue\r\n\r\n",
    )
    head = events[0]
    assert isinstance(head, RequestHead) and head.expects_continue
    assert head.framing is Framing.LENGTH and head.content_length == 4
    assert events[1:] == []  # the body has not come yet


def test_upgrade_request_ends_with_the_bytes_of_the_new_protocol() -> None:
    """An Upgrade request yields its head, its end and the bytes after it, then the reader is
    done."""
    reader = Reader("request")
    events = reader.feed(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05"
    )
    assert isinstance(events[0], RequestHead)
    assert events[1:] == [End(), Upgraded(b"\x81\x05")]
    with pytest.raises(ProtocolError):
        reader.feed(b"more")


def test_informational_responses_come_before_the_final_one() -> None:
    """A 100 Continue is a head of its own and ends at once; the final response follows."""
    events = read(
        "response", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    first, second = events[0], events[2]
    assert isinstance(first, ResponseHead) and first.informational
    assert events[1] == End()
    assert isinstance(second, ResponseHead) and second.status == 200
    assert events[3:] == [Data(b"ok"), End()]


def test_response_to_head_has_no_body_whatever_it_announces() -> None:
    """After expect_head, a response with Content-Length: 5 ends at its head, and the next
    response on the connection is read normally."""
    reader = Reader("response")
    reader.expect_head()
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n"
    )
    events += reader.feed(b"\r\nhi")
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert [h.status for h in heads] == [200, 201]
    assert heads[0].framing is Framing.NONE
    assert body_of(events) == b"hi"
    assert [e for e in events if isinstance(e, End)] == [End(), End()]


def test_response_without_length_ends_at_close() -> None:
    """A response delimited by the connection closing is read to EOF, then ends."""
    reader = Reader("response")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
    head = events[0]
    assert isinstance(head, ResponseHead) and head.framing is Framing.CLOSE
    assert not head.keep_alive
    assert reader.feed(b"data: 2\n\n") == [Data(b"data: 2\n\n")]
    assert reader.eof() == [End()]


def test_a_message_cut_short_is_an_error_at_eof() -> None:
    """EOF in the middle of a Content-Length body is the peer's fault."""
    reader = Reader("response")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError):
        reader.eof()


def test_writers_frame_heads_and_bodies() -> None:
    """Heads are written as given; a chunked writer frames data and ends with trailers."""
    assert request_head(b"GET", b"/?q=%25", [(b"host", b"h")]) == (
        b"GET /?q=%25 HTTP/1.1\r\nhost: h\r\n\r\n"
    )
    assert response_head(204, b"No Content", []) == b"HTTP/1.1 204 No Content\r\n\r\n"
    chunked = BodyWriter(chunked=True)
    assert chunked.data(b"hello") == b"5\r\nhello\r\n"
    assert chunked.data(b"") == b""
    assert chunked.end([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"
    plain = BodyWriter(chunked=False)
    assert plain.data(b"abc") == b"abc" and plain.end() == b""


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_value = st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E))
_target = st.binary(max_size=60).map(lambda b: b"/" + bytes(c for c in b if 0x21 <= c <= 0x7E))


@given(
    target=_target,
    fields=st.lists(st.tuples(_token, _value), max_size=8),
    pieces=st.lists(st.binary(min_size=1, max_size=50), max_size=5),
    trailers=st.lists(st.tuples(_token, _value), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_what_the_writers_write_the_reader_reads_back(
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    pieces: list[bytes],
    trailers: list[tuple[bytes, bytes]],
    cuts: list[int],
) -> None:
    """Any request written chunked and split anywhere reads back as the same target, fields,
    body and trailers."""
    fields = [(n, v) for n, v in fields if n not in (b"content-length", b"transfer-encoding")]
    trailers = [(n, v) for n, v in trailers if n not in (b"content-length", b"transfer-encoding")]
    writer = BodyWriter(chunked=True)
    wire = request_head(b"POST", target, [*fields, (b"transfer-encoding", b"chunked")])
    wire += b"".join(writer.data(p) for p in pieces) + writer.end(trailers)
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    events = read("request", *(wire[a:b] for a, b in itertools.pairwise(bounds)))
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.target == target
    assert head.fields == (*fields, (b"transfer-encoding", b"chunked"))
    assert body_of(events) == b"".join(pieces)
    assert events[-1] == End(tuple(trailers))
