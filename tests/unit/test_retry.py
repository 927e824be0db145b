"""Retries: Istio's defaults, Envoy's retryOn vocabulary, method safety, the budget, backoff."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.outcome import (
    CONNECT_FAILURE,
    REFUSED_STREAM,
    RESET,
    TIMEOUT,
    Outcome,
    classify,
)
from shoal.mesh.retry import (
    RetryBudget,
    RetryPolicy,
    attempt_timeout,
    backoff,
    effective,
    retriable,
    should_retry,
)
from shoal.resources.model import Retries

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)
OUTCOMES = [CONNECT_FAILURE, REFUSED_STREAM, RESET, TIMEOUT] + [
    Outcome.response(s) for s in (200, 404, 409, 429, 500, 502, 503, 504)
]


def on(*retry_on: str, attempts: int = 3) -> RetryPolicy:
    """The effective policy of ``retries {attempts, retryOn: <retry_on>}``."""
    return effective(Retries(attempts=attempts, retry_on=retry_on))


def matches(policy: RetryPolicy) -> set[str]:
    """Short names of the OUTCOMES the policy retries."""
    return {
        o.kind.value if o.kind.value != "response" else str(o.status)
        for o in OUTCOMES
        if retriable(policy, o)
    }


def test_istio_default_without_retries() -> None:
    """No retries block: 2 retries on connect-failure, refused-stream and 503 (pilot's default)."""
    policy = effective(None, timeout=15.0)
    assert policy.attempts == 2
    assert policy.status_codes == {503}
    assert policy.timeout == 15.0
    assert matches(policy) == {"connect_failure", "refused_stream", "503"}


def test_attempts_zero_disables_retries() -> None:
    """attempts 0 turns retries off, whatever the outcome."""
    policy = effective(Retries(attempts=0))
    assert not should_retry(
        policy, 1, CONNECT_FAILURE, "GET", sent=False, idempotent_opt_in=False, body_replayable=True
    )


def test_default_retry_on_keeps_503_when_attempts_are_set() -> None:
    """retries {attempts: 5} keeps Istio's retryOn and its status code 503."""
    policy = effective(Retries(attempts=5, per_try_timeout=2.0))
    assert (policy.attempts, policy.per_try_timeout) == (5, 2.0)
    assert policy.status_codes == {503}


@pytest.mark.parametrize(
    ("retry_on", "expected"),
    [
        (("5xx",), {"connect_failure", "refused_stream", "reset", "timeout", "500", "502", "503"}),
        (
            ("gateway-error",),
            {"connect_failure", "refused_stream", "reset", "timeout", "502", "503"},
        ),
        (("reset",), {"connect_failure", "refused_stream", "reset", "timeout"}),
        (("connect-failure",), {"connect_failure"}),
        (("refused-stream",), {"refused_stream"}),
        (("retriable-4xx",), {"409"}),
        (("retriable-status-codes",), set()),
        (("429", "503"), {"429", "503"}),
        (("unavailable", "cancelled", "internal"), set()),
    ],
)
def test_retry_on_vocabulary(retry_on: tuple[str, ...], expected: set[str]) -> None:
    """Each retryOn condition retries exactly Envoy's outcomes (504 matches 5xx too)."""
    found = matches(on(*retry_on))
    if "5xx" in retry_on or "gateway-error" in retry_on:
        expected = expected | {"504"}
    assert found == expected


def test_numeric_codes_imply_retriable_status_codes() -> None:
    """'503' alone in retryOn works, as in Istio: retriable-status-codes is added."""
    policy = on("connect-failure", "503")
    assert "retriable-status-codes" in policy.conditions
    assert policy.status_codes == {503}


def test_attempts_bound_the_retries() -> None:
    """With attempts 2, tries 1 and 2 may be retried, try 3 may not."""
    policy = on("5xx", attempts=2)
    verdicts = [
        should_retry(
            policy, n, RESET, "GET", sent=True, idempotent_opt_in=False, body_replayable=True
        )
        for n in (1, 2, 3)
    ]
    assert verdicts == [True, True, False]


def test_post_retried_only_when_nothing_was_sent() -> None:
    """A POST is retried after a connect failure, not after a 503 answer or a reset."""
    policy = on("5xx")
    args = {"idempotent_opt_in": False, "body_replayable": True}
    assert should_retry(policy, 1, CONNECT_FAILURE, "POST", sent=False, **args)
    assert should_retry(policy, 1, REFUSED_STREAM, "PATCH", sent=False, **args)
    assert not should_retry(policy, 1, Outcome.response(503), "POST", sent=True, **args)
    assert not should_retry(policy, 1, RESET, "POST", sent=True, **args)


def test_answer_counts_as_sent_even_if_caller_says_otherwise() -> None:
    """A response or a timeout means bytes reached the instance: a POST is not retried."""
    policy = on("5xx")
    for outcome in (Outcome.response(502), TIMEOUT, RESET):
        assert not should_retry(
            policy, 1, outcome, "POST", sent=False, idempotent_opt_in=False, body_replayable=True
        )


def test_route_opt_in_allows_post_retries() -> None:
    """With the route's opt-in, a POST whose body was buffered is retried after a 503."""
    assert should_retry(
        on("5xx"),
        1,
        Outcome.response(503),
        "POST",
        sent=True,
        idempotent_opt_in=True,
        body_replayable=True,
    )


def test_unbuffered_body_is_never_retried_once_sent() -> None:
    """A streamed body cannot be replayed: not even a GET or an opted-in POST is retried."""
    policy = on("5xx")
    for method, opt_in in (("PUT", False), ("POST", True)):
        assert not should_retry(
            policy, 1, RESET, method, sent=True, idempotent_opt_in=opt_in, body_replayable=False
        )
    assert should_retry(
        policy,
        1,
        CONNECT_FAILURE,
        "PUT",
        sent=False,
        idempotent_opt_in=False,
        body_replayable=False,
    )


def test_lower_case_method_is_idempotent_too() -> None:
    """Method names compare case-insensitively."""
    assert should_retry(
        on("5xx"), 1, RESET, "get", sent=True, idempotent_opt_in=False, body_replayable=True
    )


def test_classify_maps_upstream_causes() -> None:
    """The upstream layer's causes become local failures; a status becomes a response."""
    assert classify(503, "upstream_connect_error") is CONNECT_FAILURE
    assert classify(504, "upstream_timeout") is TIMEOUT
    assert classify(502, "upstream_reset") is RESET
    assert classify(418, None) == Outcome.response(418)
    with pytest.raises(ValueError, match="upstream_gremlins"):
        classify(None, "upstream_gremlins")
    with pytest.raises(ValueError):
        classify(None, None)


def test_attempt_timeout_is_the_smaller_limit() -> None:
    """Per-try timeout, cut short by what is left of the route timeout."""
    policy = RetryPolicy(
        attempts=2, conditions=frozenset({"5xx"}), per_try_timeout=2.0, timeout=5.0
    )
    assert attempt_timeout(policy, 0.0) == 2.0
    assert attempt_timeout(policy, 4.0) == 1.0
    assert attempt_timeout(policy, 6.0) == 0.0
    assert attempt_timeout(RetryPolicy(attempts=2, conditions=frozenset()), 9.0) is None


def test_policy_validates() -> None:
    """A negative attempt count or an unknown condition is rejected with the bad value."""
    with pytest.raises(ValueError, match="-1"):
        RetryPolicy(attempts=-1, conditions=frozenset())
    with pytest.raises(ValueError, match="always"):
        RetryPolicy(attempts=1, conditions=frozenset({"always"}))


def test_budget_floor_is_min_per_second_times_ttl() -> None:
    """With no requests, 100 retries fit in 10 s (10/s floor), the 101st does not."""
    budget = RetryBudget()
    assert all(budget.can_retry(100.0) for _ in range(100))
    assert not budget.can_retry(100.5)
    assert budget.can_retry(110.0)  # the 100.x slot has left the window


def test_budget_adds_twenty_percent_of_requests() -> None:
    """1000 requests in the window allow 0.2 x 1000 + 100 = 300 retries."""
    budget = RetryBudget()
    for i in range(1000):
        budget.on_request(100.0 + i / 200)
    allowed = sum(budget.can_retry(104.9) for _ in range(400))
    assert allowed == 300
    assert budget.window(104.9) == (1000, 300)


def test_budget_window_slides_by_bucket() -> None:
    """Requests older than ttl stop counting: at t=111 only the ones from t>=102 remain."""
    budget = RetryBudget(min_per_second=0.0)
    for t in (100.0, 101.0, 102.0, 103.0):
        for _ in range(10):
            budget.on_request(t)
    assert budget.window(109.9) == (40, 0)
    assert budget.window(111.0) == (20, 0)


@PROPERTY
@given(
    events=st.lists(st.tuples(st.booleans(), st.floats(0.0, 3.0), st.integers(1, 30)), max_size=60),
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    floor=st.sampled_from([0.0, 1.0, 10.0]),
)
def test_budget_never_exceeds_its_allowance(
    events: list[tuple[bool, float, int]], ratio: float, floor: float
) -> None:
    """Every granted retry keeps the trailing 10 s window within ratio x requests + floor x ttl."""
    budget = RetryBudget(ratio=ratio, min_per_second=floor)
    log: list[tuple[int, bool]] = []  # (one-second slot, is_retry) of everything counted
    now = 100.0
    for is_retry, step, burst in events:
        now += step
        slot = math.floor(now)
        for _ in range(burst):
            if not is_retry:
                budget.on_request(now)
                log.append((slot, False))
            elif budget.can_retry(now):
                log.append((slot, True))
                window = [r for s, r in log if slot - 10 < s <= slot]
                retries = sum(window)
                assert retries <= ratio * (len(window) - retries) + floor * 10.0 + 1e-9


@PROPERTY
@given(attempt=st.integers(1, 200), seed=st.integers(0, 2**32), base=st.floats(0.001, 1.0))
def test_backoff_within_zero_and_cap(attempt: int, seed: int, base: float) -> None:
    """Backoff is in [0, cap) and never above base x (2^attempt - 1)."""
    delay = backoff(attempt, random.Random(seed), base=base, cap=10 * base)
    assert 0.0 <= delay < 10 * base
    assert delay <= base * (2.0 ** min(attempt, 64) - 1.0)


def test_backoff_defaults_are_envoys() -> None:
    """First retry waits under 25 ms, later ones under 250 ms; same seed, same delay."""
    rng = random.Random(42)
    assert 0.0 <= backoff(1, rng) < 0.025
    assert 0.0 <= backoff(10, rng) < 0.25
    assert backoff(3, random.Random(5)) == backoff(3, random.Random(5))


@PROPERTY
@given(
    outcome=st.sampled_from(OUTCOMES),
    method=st.sampled_from(["POST", "PATCH", "CONNECT", "PROPFIND", "post"]),
    attempt=st.integers(1, 5),
    replayable=st.booleans(),
    retry_on=st.lists(
        st.sampled_from(["5xx", "gateway-error", "reset", "connect-failure", "503", "409"]),
        min_size=1,
        unique=True,
    ),
)
def test_non_idempotent_sent_never_retried_without_opt_in(
    outcome: Outcome, method: str, attempt: int, replayable: bool, retry_on: list[str]
) -> None:
    """Whatever the policy and outcome, a sent non-idempotent request is not retried."""
    assert not should_retry(
        on(*retry_on, attempts=5),
        attempt,
        outcome,
        method,
        sent=True,
        idempotent_opt_in=False,
        body_replayable=replayable,
    )


def test_grpc_conditions_match_a_grpc_status_in_the_head() -> None:
    """``unavailable`` & co. match a trailers-only gRPC answer with that status (HTTP 200), no
    other; a gRPC call is a POST, so it is retried only with the route's opt-in."""
    policy = on("unavailable", "resource-exhausted")
    assert retriable(policy, Outcome.response(200, 14))
    assert retriable(policy, Outcome.response(200, 8))
    assert not retriable(policy, Outcome.response(200, 5))
    assert not retriable(policy, Outcome.response(200))
    assert not retriable(on("5xx"), Outcome.response(200, 14))
    unavailable = Outcome.response(200, 14)
    safe = {"sent": True, "body_replayable": True}
    assert not should_retry(policy, 1, unavailable, "POST", idempotent_opt_in=False, **safe)
    assert should_retry(policy, 1, unavailable, "POST", idempotent_opt_in=True, **safe)


def test_outlier_detection_judges_a_grpc_answer_by_its_grpc_status() -> None:
    """HTTP 200 carrying UNAVAILABLE counts as a gateway error for ejection (Envoy maps
    grpc-status to HTTP there), OK and NOT_FOUND do not; retries still read the HTTP status."""
    assert Outcome.response(200, 14).is_gateway_error and Outcome.response(200, 13).is_error
    assert not Outcome.response(200, 0).is_error and not Outcome.response(200, 5).is_error
    assert not retriable(on("gateway-error", "5xx"), Outcome.response(200, 14))
