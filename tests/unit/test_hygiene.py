"""Request hygiene at the edge: head checks, forwarding headers, limits and the bounded body."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from shoal.errors import UserError
from shoal.gateway.body import BodyRefused, RequestBody
from shoal.gateway.hygiene import Head, inspect_head
from shoal.http.headers import (
    UnderscorePolicy,
    edge_request_headers,
    edit,
    end_to_end,
    request_headers,
)
from shoal.http.limits import EdgeLimits, FloodBudget, KiB
from shoal.http.refusal import Refusal

LIMITS = EdgeLimits(max_header_bytes=1000, max_header_count=10, max_uri_bytes=100)

Raw = Sequence[tuple[bytes, bytes]]


def head(
    headers: Raw = ((b"host", b"echo"),),
    *,
    path: bytes = b"/",
    query: bytes = b"",
    method: str = "GET",
    version: str = "1.1",
    limits: EdgeLimits = LIMITS,
) -> Head | Refusal:
    """``inspect_head`` with test defaults."""
    return inspect_head(method, path, query, list(headers), version, limits)


def test_underscore_names_are_rejected_only_when_asked() -> None:
    headers = [(b"host", b"echo"), (b"x_auth_user", b"admin")]
    assert isinstance(inspect_head("GET", b"/", b"", headers, "1.1", LIMITS), Head)
    rejected = inspect_head(
        "GET", b"/", b"", headers, "1.1", LIMITS, underscores=UnderscorePolicy.REJECT
    )
    assert refused(rejected) == (400, "bad_request")


def refused(result: Head | Refusal) -> tuple[int, str]:
    """The status and cause of a refusal (fails if the head was accepted)."""
    assert isinstance(result, Refusal), result
    return result.status, result.cause


def test_accepts_a_plain_head() -> None:
    """A normal request passes with its normalised path, host, fields and body expectation."""
    result = head([(b"host", b"echo"), (b"content-length", b"5")], path=b"/a//b", method="POST")
    assert isinstance(result, Head)
    assert (result.path, result.host, result.content_length, result.has_body) == (
        "/a/b",
        "echo",
        5,
        True,
    )
    assert result.fields == {"host": "echo", "content-length": "5"}


def test_uri_limit_counts_path_and_query() -> None:
    """Path + query over max_uri_bytes → 414; exactly at it passes."""
    assert isinstance(head(path=b"/" + b"a" * 49, query=b"q" * 50), Head)
    assert refused(head(path=b"/" + b"a" * 50, query=b"q" * 50)) == (414, "uri_too_long")


def test_header_count_and_size_limits() -> None:
    """More than max_header_count fields, or more than max_header_bytes (name + value + 4 per
    field), → 431; at the limits passes."""
    ten = [(b"host", b"echo")] + [(b"x-%d" % i, b"v") for i in range(9)]
    assert isinstance(head(ten), Head)
    assert refused(head([*ten, (b"x-more", b"v")])) == (431, "headers_too_large")
    at = [(b"host", b"echo"), (b"x-big", b"a" * (1000 - 8 - 5 - 8))]
    assert isinstance(head(at), Head)
    over = [(b"host", b"echo"), (b"x-big", b"a" * (1000 - 8 - 5 - 8 + 1))]
    assert refused(head(over)) == (431, "headers_too_large")


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], "1.1", 400),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], "1.1", 400),
        ([(b"transfer-encoding", b"chunked")], "1.0", 400),
        ([(b"transfer-encoding", b"chunked")], "2", 400),
        ([(b"transfer-encoding", b"gzip")], "1.1", 400),
        ([(b"content-length", b"3x")], "2", 400),
        ([(b"content-length", b"\xb2")], "2", 400),  # '²' is a digit to str.isdigit
        ([(b"content-length", b"3"), (b"content-length", b"4")], "2", 400),
    ],
)
def test_framing(headers: Raw, version: str, expected: int) -> None:
    """Transfer-Encoding with Content-Length, outside HTTP/1.1 or not chunked; a Content-Length
    that is not ASCII digits or differs from another → 400 bad_framing."""
    result = head([(b"host", b"echo"), *headers], method="POST", version=version)
    assert refused(result) == (expected, "bad_framing")


def test_identical_content_lengths_and_chunked_pass() -> None:
    """Repeated identical Content-Lengths (RFC 9110 allows them) and plain chunked pass."""
    same = [(b"host", b"echo"), (b"content-length", b"3"), (b"content-length", b"3")]
    assert isinstance(head(same, method="POST"), Head)
    chunked = head([(b"host", b"echo"), (b"transfer-encoding", b"Chunked")], method="POST")
    assert isinstance(chunked, Head) and chunked.has_body and chunked.content_length is None


def test_two_hosts_refused() -> None:
    """Two Host headers → 400 bad_request (which one routes?)."""
    assert refused(head([(b"host", b"a"), (b"host", b"b")])) == (400, "bad_request")


def test_body_limit_on_content_length() -> None:
    """Content-Length over max_body_bytes → 413 before anything is read."""
    limits = EdgeLimits(max_body_bytes=10)
    ok = head([(b"host", b"e"), (b"content-length", b"10")], method="POST", limits=limits)
    assert isinstance(ok, Head)
    big = head([(b"host", b"e"), (b"content-length", b"11")], method="POST", limits=limits)
    assert refused(big) == (413, "body_too_large")


def test_bad_path_refused() -> None:
    """A path the normaliser refuses → 400 bad_path."""
    assert refused(head(path=b"/a%2Fb")) == (400, "bad_path")


def test_limits_validate() -> None:
    """Limits must be positive numbers; the error names the field and the value."""
    with pytest.raises(UserError, match=r"limits.max_body_bytes .*\(got 0\)"):
        EdgeLimits(max_body_bytes=0)
    with pytest.raises(UserError, match="header_timeout"):
        EdgeLimits(header_timeout=float("inf"))
    with pytest.raises(UserError, match="burst"):
        FloodBudget(burst=0, rate=1.0)
    assert EdgeLimits(read_timeout=None).read_timeout is None
    assert EdgeLimits().max_header_bytes == 60 * KiB


# --- forwarding headers ----------------------------------------------------------------------


def fields_of(raw: Raw) -> dict[str, str]:
    """The str dict the hygiene step builds."""
    return {n.decode("latin-1"): v.decode("latin-1") for n, v in raw}


def forwarded(
    raw: Raw,
    *,
    trusted_hops: int = 0,
    client: str | None = "10.1.2.3",
    keep_underscores: bool = False,
) -> dict[bytes, bytes]:
    """``edge_request_headers`` as a dict (each name appears once in its output)."""
    out = edge_request_headers(
        raw,
        fields_of(raw),
        client_ip=client,
        scheme="https",
        host="echo",
        trusted_hops=trusted_hops,
        keep_underscores=keep_underscores,
    )
    names = [n for n, _ in out]
    assert len(names) == len(set(names)), names
    return dict(out)


def test_edge_strips_hop_by_hop_internal_and_named() -> None:
    """Hop-by-hop headers, those Connection names (but never Host or Content-Length), and
    x-shoal-*/identity headers are removed; other headers pass unchanged."""
    out = forwarded(
        [
            (b"host", b"echo"),
            (b"content-length", b"0"),
            (b"connection", b"close, x-a, host, content-length"),
            (b"connection", b"x-b"),
            (b"x-a", b"1"),
            (b"x-b", b"2"),
            (b"keep-alive", b"timeout=1"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"transfer-encoding", b"chunked"),
            (b"proxy-authorization", b"secret"),
            (b"x-shoal-peer", b"spiffe://x/svc/admin"),
            (b"x-shoal-cause", b"forged"),
            (b"x-forwarded-client-cert", b"By=spiffe://x"),
            (b"x-keep", b"k"),
        ]
    )
    assert out[b"host"] == b"echo"
    assert out[b"content-length"] == b"0"
    assert out[b"x-keep"] == b"k"
    for gone in (b"connection", b"x-a", b"x-b", b"keep-alive", b"te", b"upgrade",
                 b"transfer-encoding", b"proxy-authorization", b"x-shoal-peer", b"x-shoal-cause",
                 b"x-forwarded-client-cert"):  # fmt: skip
        assert gone not in out, gone


def test_edge_replaces_forwarding_headers_from_untrusted_peers() -> None:
    """With trusted_hops=0 the client's X-Forwarded-*/Forwarded are replaced by the gateway's
    own, and naming them (or x-request-id) in Connection does not remove the gateway's."""
    out = forwarded(
        [
            (b"host", b"echo"),
            (b"connection", b"x-forwarded-for, x-request-id, forwarded"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"evil"),
            (b"forwarded", b"for=6.6.6.6"),
            (b"x-request-id", b"abc-123"),
        ]
    )
    assert out[b"x-forwarded-for"] == b"10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"echo"
    assert out[b"forwarded"] == b"for=10.1.2.3;proto=https;host=echo"
    assert out[b"x-request-id"] == b"abc-123"


def test_edge_writes_x_real_ip_and_drops_underscore_names_by_default() -> None:
    """A client's X-Real-IP is replaced by the peer (or, behind trusted proxies, the client the
    outermost one saw); names with an underscore are dropped unless kept."""
    raw = [
        (b"host", b"echo"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
        (b"x_auth_user", b"admin"),
        (b"x-auth-user", b"guest"),
    ]
    out = forwarded(raw)
    assert out[b"x-real-ip"] == b"10.1.2.3"
    assert b"x_auth_user" not in out and out[b"x-auth-user"] == b"guest"
    assert forwarded(raw, trusted_hops=1)[b"x-real-ip"] == b"2.2.2.2"
    assert forwarded(raw, keep_underscores=True)[b"x_auth_user"] == b"admin"
    assert b"x-real-ip" not in forwarded(raw, client=None)


def test_edge_trusted_hops_keep_the_last_entries() -> None:
    """With trusted_hops=N only the last N X-Forwarded-For/Forwarded entries (over all header
    lines) survive, the peer is appended, and the trusted proxy's proto and host are kept."""
    raw = [
        (b"host", b"echo"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
        (b"x-forwarded-for", b"3.3.3.3"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"public.example"),
        (b"forwarded", b'for=1.1.1.1, for="[2001:db8::1]";host="a,b"'),
    ]
    out = forwarded(raw, trusted_hops=2)
    assert out[b"x-forwarded-for"] == b"2.2.2.2, 3.3.3.3, 10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"public.example"
    assert out[b"forwarded"] == (
        b'for=1.1.1.1, for="[2001:db8::1]";host="a,b", for=10.1.2.3;proto=https;host=echo'
    )
    assert forwarded(raw, trusted_hops=1)[b"x-forwarded-for"] == b"3.3.3.3, 10.1.2.3"


def test_edge_request_id_and_forwarded_quoting() -> None:
    """A request id that is not 1-128 visible ASCII characters is replaced by a fresh one; an
    IPv6 peer and a host with a port are quoted in Forwarded."""
    out = forwarded([(b"host", b"echo"), (b"x-request-id", b"bad id\x01")], client="2001:db8::7")
    assert len(out[b"x-request-id"]) == 32 and out[b"x-request-id"] != b"bad id\x01"
    with_port = edge_request_headers(
        [(b"host", b"echo:8080")],
        {"host": "echo:8080"},
        client_ip="2001:db8::7",
        scheme="http",
        host="echo:8080",
    )
    assert dict(with_port)[b"forwarded"] == b'for="[2001:db8::7]";proto=http;host="echo:8080"'


def test_router_request_headers_keep_the_chain() -> None:
    """Inside the mesh the caller's forwarding headers are kept, the peer appended, and a
    Connection header naming x-request-id cannot drop the request id."""
    raw = [
        (b"host", b"world"),
        (b"connection", b"x-request-id"),
        (b"x-request-id", b"r-1"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
    ]
    out = dict(request_headers(raw, fields_of(raw), "10.0.0.2", "http"))
    assert out[b"x-request-id"] == b"r-1"
    assert out[b"x-forwarded-for"] == b"10.0.0.1, 10.0.0.2"
    assert out[b"x-forwarded-proto"] == b"https"
    assert b"connection" not in out


def test_end_to_end_responses() -> None:
    """Response headers lose hop-by-hop ones and those Connection names, and pseudo-headers."""
    out = end_to_end(
        [(b":status", b"200"), (b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")]
    )
    assert out == [(b"x-b", b"2")]


# --- the bounded body ------------------------------------------------------------------------


def receiver(messages: list[dict[str, Any]], stall: bool = False) -> Any:
    """An ASGI ``receive`` that returns ``messages`` in order, then (if ``stall``) never
    returns."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if stall:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


async def drain(body: RequestBody) -> bytes:
    """Every chunk of ``body``, joined."""
    return b"".join([chunk async for chunk in body.chunks()])


async def test_body_passes_within_limits() -> None:
    """A body within the limits comes through whole."""
    messages = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]
    loop = asyncio.get_running_loop()
    body = RequestBody(receiver(messages), EdgeLimits(max_body_bytes=4), loop.time())
    assert await drain(body) == b"abcd"
    assert body.refusal is None


async def test_body_over_limit_fails_before_the_crossing_chunk() -> None:
    """The chunk that crosses max_body_bytes is never yielded; the body fails with 413."""
    messages = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": True},
    ]
    loop = asyncio.get_running_loop()
    body = RequestBody(receiver(messages), EdgeLimits(max_body_bytes=4), loop.time())
    seen: list[bytes] = []
    with pytest.raises(BodyRefused):
        async for chunk in body.chunks():
            seen.append(chunk)
    assert seen == [b"abc"]
    assert body.refusal is not None and body.refusal.status == 413


async def test_body_stall_and_disconnect() -> None:
    """A body that stops arriving fails with 408 after body_idle_timeout; one whose client left
    fails too (the upstream must not see it as complete)."""
    loop = asyncio.get_running_loop()
    limits = EdgeLimits(body_idle_timeout=0.05)
    stalled = RequestBody(
        receiver([{"type": "http.request", "body": b"a", "more_body": True}], stall=True),
        limits,
        loop.time(),
    )
    with pytest.raises(BodyRefused):
        await drain(stalled)
    assert stalled.refusal is not None and stalled.refusal.status == 408
    gone = RequestBody(receiver([]), limits, loop.time())
    with pytest.raises(BodyRefused):
        await drain(gone)
    assert gone.refusal is not None and gone.refusal.cause == "client_closed"


async def test_body_total_deadline() -> None:
    """A body still arriving body_timeout after its head fails with 408 even if it never
    pauses for long."""
    loop = asyncio.get_running_loop()
    limits = EdgeLimits(body_timeout=0.05, body_idle_timeout=10)

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.01)  # a slow client, not a wait for a condition
        return {"type": "http.request", "body": b"x", "more_body": True}

    body = RequestBody(trickle, limits, loop.time())
    with pytest.raises(BodyRefused):
        await drain(body)
    assert body.refusal is not None and body.refusal.status == 408


def test_header_edits_remove_then_set_then_add_in_order() -> None:
    """Each operation set removes, overwrites every field of a name, then appends; a later set
    (a destination's) wins over an earlier one (the route's)."""
    headers = [(b"a", b"1"), (b"b", b"1"), (b"b", b"2"), (b"c", b"1")]
    route = (((b"b", b"route"),), ((b"d", b"1"),), frozenset({b"c"}))
    destination = (((b"b", b"destination"),), ((b"d", b"2"),), frozenset())
    assert edit(headers, [route, destination]) == [
        (b"a", b"1"),
        (b"d", b"1"),
        (b"b", b"destination"),
        (b"d", b"2"),
    ]
    assert edit(headers, []) == headers
