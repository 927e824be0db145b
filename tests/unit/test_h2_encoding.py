"""The header encoding of Shoal's HTTP/2 connections: what it sends decodes to what was given,
no value is Huffman-coded, and a value new on every message stays out of the dynamic table."""

from __future__ import annotations

import hpack

from shoal.http.h2_encoding import LiteralEncoder


def _answer(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"server", b"nginx"),
        (b"x-request-id", b"%032x" % i),
        (b"traceparent", b"00-%032x-%016x-01" % (i, i)),
    ]


def test_blocks_decode_to_what_was_encoded() -> None:
    encoder, decoder = LiteralEncoder(), hpack.Decoder()
    for i in range(50):
        assert decoder.decode(encoder.encode(_answer(i)), raw=True) == _answer(i)


def test_unique_values_are_not_indexed_and_others_are() -> None:
    """After many answers the dynamic table holds the repeated fields only, and a repeat
    encodes them as one-byte indexes; x-request-id and traceparent go literally each time."""
    encoder = LiteralEncoder()
    for i in range(100):
        encoder.encode(_answer(i))
    names = {name for name, _ in encoder.header_table.dynamic_entries}
    assert names == {b"content-type", b"server"}
    block = encoder.encode(_answer(1000))
    assert b"%032x" % 1000 in block  # a literal, not Huffman-coded
    assert len(block) < 3 + 2 * (len(b"x-request-id") + 32 + len(b"traceparent") + 55)


def test_huffman_is_never_used() -> None:
    block = LiteralEncoder().encode([(b"x-custom", b"hello world")], huffman=True)
    assert b"hello world" in block
