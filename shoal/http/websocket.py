"""Just enough of WebSocket framing (RFC 6455 §5.2) for a proxy that tunnels it byte for byte:
where the frames of one direction begin and end, without buffering them, so that the proxy can
add a close frame of its own between two of them — "going away" (1001) when the instance's end
of the tunnel goes without a word or the proxy itself shuts down — instead of cutting the
connection."""

from __future__ import annotations

__all__ = ["GOING_AWAY", "Frames"]

_CLOSE = 0x8
GOING_AWAY = b"\x88\x02\x03\xe9"
"""A server's close frame (final, unmasked) with status 1001: the endpoint is going away."""


class Frames:
    """The frame boundaries of one direction of a WebSocket, fed the bytes as they pass."""

    def __init__(self) -> None:
        self._head = bytearray()  # the part of a frame header read so far
        self._left = 0  # payload bytes of the current frame still to pass
        self.closed = False  # a close frame went by: that side has said goodbye

    @property
    def between(self) -> bool:
        """Whether the bytes so far end exactly between two frames."""
        return not self._head and not self._left

    def feed(self, data: bytes | memoryview) -> None:
        """Follow ``data``, the next bytes of the direction."""
        view, i = memoryview(data), 0
        while i < len(view):
            if self._left:
                taken = min(self._left, len(view) - i)
                self._left -= taken
                i += taken
                continue
            self._head.append(view[i])
            i += 1
            needed = _header_size(self._head)
            if len(self._head) == needed:
                self._left = _payload_size(self._head)
                if self._head[0] & 0x0F == _CLOSE:
                    self.closed = True
                self._head.clear()


def _header_size(head: bytearray) -> int:
    """The whole header's size once its first two bytes are known (2 until then)."""
    if len(head) < 2:
        return 2
    length = head[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_size(head: bytearray) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length
