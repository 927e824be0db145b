"""Which gRPC responses carry their status in trailers, and how a trailers-only one is split."""

from __future__ import annotations

from shoal.http import grpc

GRPC = (b"content-type", b"application/grpc")


def test_a_grpc_response_awaits_trailers_unless_its_head_has_the_status() -> None:
    """gRPC (any application/grpc+…) without grpc-status in its head: the status comes last."""
    assert grpc.awaits_trailers([GRPC])
    assert grpc.awaits_trailers([(b"content-type", b"application/grpc+proto")])
    assert not grpc.awaits_trailers([GRPC, (b"grpc-status", b"0")])
    assert not grpc.awaits_trailers([(b"content-type", b"text/plain")])


def test_a_trailers_only_response_is_split_into_head_and_trailers() -> None:
    """The content-type stays in the head; the status and every metadata field move."""
    head = [GRPC, (b"grpc-status", b"5"), (b"grpc-message", b"gone"), (b"detail-bin", b"AAE")]
    assert grpc.trailers_only(head) == ([GRPC], head[1:])
    assert grpc.trailers_only([GRPC]) is None
    assert grpc.trailers_only([(b"content-type", b"text/plain"), (b"grpc-status", b"0")]) is None
