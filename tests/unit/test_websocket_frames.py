"""Following a WebSocket direction's frame boundaries as its bytes pass, however they are cut."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from shoal.http.websocket import GOING_AWAY, Frames


def frame(payload: bytes, opcode: Opcode = Opcode.BINARY, *, masked: bool = False) -> bytes:
    """One frame as a client (``masked``) or a server sends it, made by wsproto."""
    protocol = FrameProtocol(client=masked, extensions=[])
    if opcode is Opcode.CLOSE:
        return protocol.close(1000, payload.decode())
    return protocol.send_data(payload if opcode is Opcode.BINARY else payload.decode(), True)


@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]), max_size=6),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=30),
)
def test_boundaries_are_found_however_the_stream_is_cut(
    sizes: list[int], masked: bool, cuts: list[int]
) -> None:
    """Every length form (7-bit, 16-bit, 64-bit), masked or not, fed in arbitrary pieces: the
    tracker is between frames exactly at the end of each frame, and not before."""
    frames = [frame(os.urandom(size), masked=masked) for size in sizes]
    stream = b"".join(frames)
    ends = set()
    at = 0
    for f in frames:
        at += len(f)
        ends.add(at)
    tracker, position = Frames(), 0
    pieces = iter(cuts)
    while position < len(stream):
        size = next(pieces, len(stream))
        tracker.feed(stream[position : position + size])
        position = min(position + size, len(stream))
        assert tracker.between == (position in ends or position == 0)
    assert tracker.between and not tracker.closed


def test_a_close_frame_is_noticed_and_going_away_is_one() -> None:
    tracker = Frames()
    tracker.feed(frame(b"hi", Opcode.TEXT) + frame(b"bye", Opcode.CLOSE))
    assert tracker.closed and tracker.between
    going = Frames()
    going.feed(GOING_AWAY)
    assert going.closed and going.between
    assert int.from_bytes(GOING_AWAY[2:4], "big") == 1001
