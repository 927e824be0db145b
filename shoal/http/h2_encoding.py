"""HTTP/2 header blocks without Huffman coding, for every HTTP/2 connection Shoal drives.

hpack (the ``h2`` library's encoder) Huffman-codes every literal value in pure Python: ~8 µs
per value not in the dynamic table. Each hop now sends one on every request or answer (a
``traceparent`` naming its own span, an ``x-request-id``), so each paid it on every message;
literal bytes cost ~20% more of those values on the wire instead (RFC 7541 lets the encoder
choose, and a decoder reads both).
"""

from __future__ import annotations

from typing import Any

import h2.connection
import hpack

__all__ = ["LiteralEncoder", "without_huffman"]


class LiteralEncoder(hpack.Encoder):
    """hpack's encoder, never Huffman-coding."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


def without_huffman(connection: h2.connection.H2Connection) -> h2.connection.H2Connection:
    """``connection``, its header blocks encoded by a :class:`LiteralEncoder` (call before it
    sends any)."""
    connection.encoder = LiteralEncoder()
    return connection
