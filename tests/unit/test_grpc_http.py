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


def test_grpc_timeout_values() -> None:
    """1 to 8 ASCII digits and a unit; anything else is no deadline at all."""
    assert grpc.timeout("300m") == 0.3
    assert grpc.timeout("2S") == 2.0 and grpc.timeout("1H") == 3600.0
    assert grpc.timeout("99999999n") == 99999999e-9
    for bad in (None, "", "m", "123456789m", "10x", "-1S", "1.5S", "²S"):
        assert grpc.timeout(bad) is None, bad


def test_a_deadline_shoal_enforced_is_deadline_exceeded() -> None:
    """Shoal's upstream timeout (HTTP 504) is DEADLINE_EXCEEDED for a gRPC client, as Envoy's."""
    assert grpc.refusal_trailers(504, "late", timed_out=True)[0] == (b"grpc-status", b"4")


def test_head_status_reads_a_trailers_only_answer() -> None:
    """grpc-status in a gRPC head is the call's status; elsewhere there is none."""
    assert grpc.head_status([GRPC, (b"grpc-status", b"14")]) == 14
    assert grpc.head_status([GRPC]) is None
    assert grpc.head_status([(b"grpc-status", b"14")]) is None  # not gRPC
    assert grpc.head_status([GRPC, (b"grpc-status", b"x")]) is None
