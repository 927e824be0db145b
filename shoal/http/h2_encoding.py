"""HTTP/2 header blocks as Shoal's connections encode them: no Huffman coding, and the values
that are new on every message kept out of the dynamic table.

hpack (the ``h2`` library's encoder) Huffman-codes every literal value in pure Python: ~8 µs
per value not in the dynamic table; literal bytes cost ~20% more of those values on the wire
instead (RFC 7541 lets the encoder choose, and a decoder reads both). And it adds every value it
has not seen to the dynamic table, whose search is a Python loop over its entries: a value that
is new on every message (the ``x-request-id`` on every answer, the ``traceparent`` each hop
sends) only evicts the entries that would be reused and lengthens each search, so those go as
literals without indexing (RFC 7541 §6.2.2).
"""

from __future__ import annotations

from typing import Any

import h2.connection
import hpack
from hpack.hpack import INDEX_NONE

__all__ = ["UNIQUE", "LiteralEncoder", "without_huffman"]

UNIQUE = frozenset({b"x-request-id", b"traceparent"})
"""Fields whose value differs on every message: never added to the dynamic table (neither
name is in the static table)."""


class LiteralEncoder(hpack.Encoder):
    """hpack's encoder, never Huffman-coding nor indexing :data:`UNIQUE` fields."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name in UNIQUE:
            return self._encode_literal(name, value, INDEX_NONE, False)
        return super().add(to_add, sensitive, huffman)


def without_huffman(connection: h2.connection.H2Connection) -> h2.connection.H2Connection:
    """``connection``, its header blocks encoded by a :class:`LiteralEncoder` (call before it
    sends any)."""
    connection.encoder = LiteralEncoder()
    return connection
