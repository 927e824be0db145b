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


def test_shoals_own_answers_map_to_grpc_statuses_as_envoys_do() -> None:
    """The gRPC project's HTTP→gRPC mapping; anything else is UNKNOWN."""
    assert [grpc.status_for(s) for s in (400, 401, 403, 404, 429, 502, 503, 504)] == [
        13, 16, 7, 12, 14, 14, 14, 14,
    ]  # fmt: skip
    assert grpc.status_for(413) == grpc.status_for(500) == 2


def test_grpc_message_is_percent_encoded_outside_printable_ascii_and_percent() -> None:
    """The spec's Percent-Encoded form: %-escapes for '%' and non-printable or non-ASCII bytes."""
    assert grpc.refusal_trailers(503, 'no_healthy_upstream: 100% ✓ "q"') == [
        (b"grpc-status", b"14"),
        (b"grpc-message", b'no_healthy_upstream: 100%25 %E2%9C%93 "q"'),
    ]
    assert grpc.is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not grpc.is_grpc([(b"content-type", b"application/json")])
