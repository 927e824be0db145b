"""``--limit NAME=VALUE`` flags → :class:`EdgeLimits`: every kind of value, and one-line errors."""

from __future__ import annotations

from typing import get_type_hints

import pytest

from shoal.errors import UserError
from shoal.http.limits import (
    LIMIT_NAMES,
    EdgeLimits,
    FloodBudget,
    GiB,
    KiB,
    MiB,
    parse_limits,
)


def refused(*pairs: str) -> str:
    """The one-line message ``parse_limits`` refuses ``pairs`` with."""
    with pytest.raises(UserError) as caught:
        parse_limits(pairs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_flags_is_the_defaults() -> None:
    """Without flags the limits are the defaults, and ``base`` is returned as it is."""
    assert parse_limits([]) == EdgeLimits()
    base = EdgeLimits(max_body_bytes=5)
    assert parse_limits([], base) is base


def test_sizes_take_plain_bytes_and_binary_suffixes() -> None:
    """``*_bytes`` limits take bytes, or a KiB/MiB/GiB suffix (any case, space allowed)."""
    assert parse_limits(["max_body_bytes=1000"]).max_body_bytes == 1000
    assert parse_limits(["max_body_bytes=1MiB"]).max_body_bytes == MiB
    assert parse_limits(["max_header_bytes=64KiB"]).max_header_bytes == 64 * KiB
    assert parse_limits(["max_body_bytes=2GiB"]).max_body_bytes == 2 * GiB
    assert parse_limits(["max_uri_bytes=4 kib"]).max_uri_bytes == 4 * KiB


@pytest.mark.parametrize("value", ["lots", "1MB", "1.5MiB", "1e6", "-1", "", "1 MiB x", "1TiB"])
def test_a_bad_size_is_refused(value: str) -> None:
    """A size that is not whole bytes with a binary suffix names the flag, the pair and how."""
    message = refused(f"max_body_bytes={value}")
    assert message.startswith(f"--limit 'max_body_bytes={value}': not a size")
    assert "1MiB" in message


def test_counts_are_whole_numbers_without_suffixes() -> None:
    """Counts take a whole number; a size suffix on a count is refused."""
    limits = parse_limits(["max_header_count=50", "backlog=64", "h2_max_concurrent_streams=250"])
    assert (limits.max_header_count, limits.backlog, limits.h2_max_concurrent_streams) == (
        50,
        64,
        250,
    )
    assert "not a whole number" in refused("max_connections=1KiB")
    assert "not a whole number" in refused("backlog=2.5")


def test_times_are_seconds_with_an_optional_s() -> None:
    """Times take whole or decimal seconds, optionally suffixed with ``s``."""
    limits = parse_limits(["header_timeout=5", "body_timeout=2.5s", "idle_timeout=.5"])
    assert (limits.header_timeout, limits.body_timeout, limits.idle_timeout) == (5.0, 2.5, 0.5)
    assert parse_limits(["tls_handshake_timeout=3 s"]).tls_handshake_timeout == 3.0


@pytest.mark.parametrize("value", ["soon", "5m", "500ms", "inf", "nan", "1e3", "off", "-1"])
def test_a_bad_time_is_refused(value: str) -> None:
    """A time that is not plain seconds is refused, naming the pair; only read_timeout has off."""
    message = refused(f"header_timeout={value}")
    assert message.startswith(f"--limit 'header_timeout={value}': not a number of seconds")


def test_read_timeout_can_be_turned_off() -> None:
    """``read_timeout`` takes seconds, or none/off (any case) for no read timeout at all."""
    assert parse_limits(["read_timeout=none"]).read_timeout is None
    assert parse_limits(["read_timeout=OFF"]).read_timeout is None
    assert parse_limits(["read_timeout=90s"]).read_timeout == 90.0
    assert "or off" in refused("read_timeout=never")


def test_flood_budgets_are_burst_slash_rate() -> None:
    """``h2_*`` flood budgets take BURST/RATE; RATE may be decimal or 0."""
    limits = parse_limits(["h2_ping=50/10", "h2_reset=200/2.5", "h2_settings=5/0"])
    assert limits.h2_ping == FloodBudget(burst=50, rate=10.0)
    assert limits.h2_reset == FloodBudget(burst=200, rate=2.5)
    assert limits.h2_settings == FloodBudget(burst=5, rate=0.0)
    assert "BURST/RATE" in refused("h2_priority=50")
    assert "BURST/RATE" in refused("h2_priority=1.5/10")


def test_flood_budget_validation_still_applies() -> None:
    """FloodBudget's own checks surface as one-line errors naming the pair."""
    assert refused("h2_ping=0/10") == (
        "--limit 'h2_ping=0/10': flood budget burst must be >= 1 (got 0)"
    )


def test_edge_limits_validation_still_applies() -> None:
    """EdgeLimits' own checks (positive, finite) surface as one-line errors naming the pair."""
    assert refused("max_body_bytes=0") == (
        "--limit 'max_body_bytes=0': limits.max_body_bytes must be a positive number (got 0)"
    )
    assert "positive" in refused("idle_timeout=0s")
    assert "positive" in refused("body_timeout=" + "9" * 400)  # overflows to inf


def test_names_take_dashes_and_any_case() -> None:
    """A name may use ``-`` for ``_`` and any case, with spaces around its parts."""
    limits = parse_limits(["max-body-bytes=1KiB", "Header-Timeout=3", " backlog = 8 "])
    assert (limits.max_body_bytes, limits.header_timeout, limits.backlog) == (KiB, 3.0, 8)


def test_an_unknown_name_lists_the_known_ones() -> None:
    """An unknown name is refused with the flag, the pair and every valid name."""
    message = refused("nope=1")
    assert message.startswith("--limit 'nope=1': unknown limit 'nope'; known: ")
    assert all(name in message for name in LIMIT_NAMES)


def test_a_pair_needs_an_equals_sign() -> None:
    """A pair without ``=`` is refused with an example of the form."""
    assert refused("max_body_bytes") == (
        "--limit 'max_body_bytes': expected NAME=VALUE, e.g. max_body_bytes=1MiB"
    )


def test_later_pairs_win_and_apply_over_base() -> None:
    """Pairs apply in order over ``base``: a repeated name keeps its last value, others stay."""
    base = EdgeLimits(max_header_count=7)
    limits = parse_limits(["max_body_bytes=1KiB", "max_body_bytes=2KiB"], base)
    assert (limits.max_body_bytes, limits.max_header_count) == (2 * KiB, 7)


def test_the_flag_name_is_the_callers() -> None:
    """Errors name the flag the caller parsed, for other front ends than --limit."""
    with pytest.raises(UserError, match=r"^--edge 'nope=1': unknown limit"):
        parse_limits(["nope=1"], flag="--edge")


def test_every_field_can_be_set() -> None:
    """Every EdgeLimits field has a --limit parser (a field of a new type fails at import)."""
    samples: dict[object, tuple[str, object]] = {
        int: ("3", 3),
        float: ("3", 3.0),
        float | None: ("3", 3.0),
        FloodBudget: ("3/3", FloodBudget(burst=3, rate=3.0)),
    }
    hints = get_type_hints(EdgeLimits)
    assert set(LIMIT_NAMES) == set(hints)
    limits = parse_limits([f"{name}={samples[hints[name]][0]}" for name in LIMIT_NAMES])
    assert {name: getattr(limits, name) for name in LIMIT_NAMES} == {
        name: samples[hints[name]][1] for name in LIMIT_NAMES
    }


def test_every_hop_admits_what_the_edge_admits() -> None:
    """The edge's head limits, raised by --limit, are the router's too, with room for the
    fields Shoal's proxies add on the way."""
    limits = parse_limits(["max_header_count=150", "max_header_bytes=120KiB"])
    edge, inner = limits.head_limits(), limits.head_limits(inner=True)
    assert (edge.max_field_count, edge.max_field_bytes) == (150, 120 * 1024)
    assert inner.max_field_count >= 150 + 10 and inner.max_field_bytes >= 120 * 1024 + 2048
    assert inner.max_target_bytes > edge.max_target_bytes == 8 * 1024
