"""``shoal weights`` as a pure edit of a VirtualService."""

from __future__ import annotations

import pytest

from shoal.errors import UserError
from shoal.mesh.stats import quantile
from shoal.platform.control.rollout_runner import delta, latency_p99, outcome_totals
from shoal.resources.model import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    RouteDestination,
    Service,
    StringMatch,
    Subset,
    VirtualService,
)
from shoal.resources.weights import (
    current_weights,
    find_virtual_service,
    parse_weights,
    set_weights,
    subset_revisions,
    traffic_shares,
)

RULE = DestinationRule(
    name="hello",
    host="hello",
    subsets=(
        Subset(name="v1", labels=(("version", "v1"),)),
        Subset(name="v2", labels=(("version", "v2"),)),
    ),
)


def revisions(service: str, *names: str) -> list[Service]:
    """Revisions ``names`` of ``service``."""
    return [Service(name=service, revision=name, app="app:a") for name in names]


HELLO_REVISIONS = revisions("hello", "v1", "v2")
REVIEWS_REVISIONS = revisions("reviews", "v1", "v2", "v3")

RULE_3 = DestinationRule(
    name="reviews",
    host="reviews",
    subsets=(*RULE.subsets, Subset(name="v3", labels=(("version", "v3"),))),
)


def to(host: str, subset: str | None = None, weight: int = 100) -> RouteDestination:
    """A weighted destination."""
    return RouteDestination(destination=Destination(host=host, subset=subset), weight=weight)


def test_parse_weights() -> None:
    """SUBSET=WEIGHT pairs parse to a dict."""
    assert parse_weights(["v1=80", "v2=20"]) == {"v1": 80, "v2": 20}


@pytest.mark.parametrize("pairs", [["v1=80", "v2=30"], ["v1"], ["v1=x"], ["v1=50", "v1=50"], []])
def test_parse_weights_rejects(pairs: list[str]) -> None:
    """Malformed pairs, duplicates and sums other than 100 are user errors."""
    with pytest.raises(UserError):
        parse_weights(pairs)


def test_edits_only_routes_to_the_service() -> None:
    """Routes to the service get the split; a route to another service is kept."""
    other = HTTPRoute(match=(HTTPMatchRequest(uri=StringMatch(prefix="/w")),), route=(to("world"),))
    vs = VirtualService(
        name="hello", hosts=("hello",), http=(other, HTTPRoute(route=(to("hello", "v1"),)))
    )
    got = set_weights("hello", {"v1": 80, "v2": 20}, vs, RULE, HELLO_REVISIONS)
    assert got.http[0] == other
    assert got.http[1].route == (to("hello", "v1", 80), to("hello", "v2", 20))


REVIEWS = "reviews.default.svc.cluster.local"
JASON = HTTPRoute(
    match=(HTTPMatchRequest(headers=(("end-user", StringMatch(exact="jason")),)),),
    route=(to(REVIEWS, "v2"),),
)


def test_only_the_default_route_changes_and_hosts_stay_as_written() -> None:
    """Istio's request-routing task: ``end-user: jason`` goes to v2, everyone else to v1. A
    split changes the catch-all route only, keeping its host as written; the jason rule stays."""
    vs = VirtualService(
        name="reviews-routes",
        hosts=(REVIEWS,),
        http=(JASON, HTTPRoute(route=(to(REVIEWS, "v1"),))),
    )
    assert find_virtual_service("reviews", [vs]) == vs  # by the service its host names
    got = set_weights("reviews", {"v1": 80, "v2": 20}, vs, RULE, REVIEWS_REVISIONS)
    assert got.http[0] == JASON
    assert got.http[1].route == (to(REVIEWS, "v1", 80), to(REVIEWS, "v2", 20))
    assert current_weights("reviews", got) == {"v1": 80, "v2": 20}


def test_a_named_route_changes_by_name() -> None:
    """``--route NAME`` splits that route (a rule with a match too); a name no route has, or a
    route to another service, is refused naming what there is; without a catch-all route the
    user is told to name one."""
    named = HTTPRoute(name="jason", match=JASON.match, route=JASON.route)
    vs = VirtualService(name="reviews", hosts=("reviews",), http=(named,))
    got = set_weights("reviews", {"v2": 50, "v3": 50}, vs, RULE_3, REVIEWS_REVISIONS, route="jason")
    assert got.http[0].route == (to(REVIEWS, "v2", 50), to(REVIEWS, "v3", 50))
    assert got.http[0].match == JASON.match
    with pytest.raises(UserError, match="no route named nope \\(jason\\)"):
        set_weights("reviews", {"v1": 100}, vs, RULE, REVIEWS_REVISIONS, route="nope")
    with pytest.raises(UserError, match=r"no default route .* --route"):
        set_weights("reviews", {"v1": 100}, vs, RULE, REVIEWS_REVISIONS)
    with pytest.raises(UserError, match="does not go to ratings"):
        set_weights("ratings", {"v1": 100}, vs, RULE, revisions("ratings", "v1"), route="jason")


def test_creates_virtual_service_when_missing() -> None:
    """Without a VirtualService one named after the service is made."""
    got = set_weights("hello", {"v1": 100}, None, RULE, HELLO_REVISIONS)
    assert got.hosts == ("hello",) and got.http[0].route == (to("hello", "v1", 100),)


def test_unknown_subset_is_an_error() -> None:
    """A subset that is neither a revision nor defined by a DestinationRule is refused, naming
    both; so is traffic to a subset whose labels select no revision (its revision deleted);
    a revision is a subset by its own name without any DestinationRule."""
    with pytest.raises(
        UserError, match=r"neither one of its revisions \(v1, v2\) nor .* \(v1, v2\)"
    ):
        set_weights("hello", {"v3": 100}, None, RULE, HELLO_REVISIONS)
    with pytest.raises(UserError, match="subset v2 of hello selects no revision"):
        set_weights("hello", {"v1": 50, "v2": 50}, None, RULE, revisions("hello", "v1"))
    got = set_weights("hello", {"v1": 50, "5f3a": 50}, None, None, revisions("hello", "v1", "5f3a"))
    assert got.http[0].route == (to("hello", "v1", 50), to("hello", "5f3a", 50))


def test_find_virtual_service_by_host() -> None:
    """The VirtualService is found by its hosts first."""
    a = VirtualService(name="edge", hosts=("hello",), http=())
    assert find_virtual_service("hello", [a]) == a


def svc(revision: str, **labels: str) -> Service:
    return Service(
        name="hello", revision=revision, app="app:hello", labels=tuple(sorted(labels.items()))
    )


def test_current_weights_read_back_what_set_weights_wrote() -> None:
    """The first route to the service gives the split; a lone destination has it all."""
    vs = set_weights("hello", {"v1": 80, "v2": 20}, None, RULE, HELLO_REVISIONS)
    assert current_weights("hello", vs) == {"v1": 80, "v2": 20}
    alone = set_weights("hello", {"v2": 100}, vs, RULE, HELLO_REVISIONS)
    assert current_weights("hello", alone) == {"v2": 100}
    with pytest.raises(UserError, match="by subset"):
        current_weights(
            "hello",
            VirtualService(name="h", hosts=("hello",), http=(HTTPRoute(route=(to("hello"),)),)),
        )
    with pytest.raises(UserError, match="no VirtualService route"):
        current_weights("hello", None)


def test_traffic_shares_follow_subset_labels_to_revisions() -> None:
    """A subset's weight goes to the revisions whose instance labels it selects, split evenly;
    without a split by subset there are no shares (every instance serves)."""
    rule = DestinationRule(
        name="hello",
        host="hello",
        subsets=(
            Subset(name="stable", labels=(("track", "stable"),)),
            Subset(name="v3", labels=(("version", "v3"),)),
        ),
    )
    services = [svc("v1", track="stable"), svc("v2", track="stable"), svc("v3")]
    assert subset_revisions("hello", "stable", rule, services) == ["hello/v1", "hello/v2"]
    vs = set_weights("hello", {"stable": 90, "v3": 10}, None, rule, services)
    assert traffic_shares("hello", vs, rule, services) == {
        "hello/v1": 45.0,
        "hello/v2": 45.0,
        "hello/v3": 10.0,
    }
    # Without a VirtualService: all to the latest ready revision (the latest applied when none
    # is ready), as in Knative.
    assert traffic_shares("hello", None, rule, services) == {"hello/v3": 100.0}
    assert traffic_shares("hello", None, rule, services, {"hello/v1"}) == {"hello/v1": 100.0}
    with pytest.raises(UserError, match="neither one of its revisions"):
        subset_revisions("hello", "nope", rule, services)


def test_rollout_counts_deltas_per_proxy() -> None:
    """Observations are what each proxy's counters grew by; a restarted proxy counts from 0."""
    before = outcome_totals(
        {"gateway": {"outcomes": {"hello/v2": [10, 1]}}, "router/n1": {}}, ["hello/v2"]
    )
    after = outcome_totals(
        {
            "gateway": {"outcomes": {"hello/v2": [3, 0]}},
            "router/n1": {"outcomes": {"hello/v2": [5, 5]}},
        },
        ["hello/v2"],
    )
    assert delta(before, after, "requests") == 8
    assert delta(before, after, "errors") == 5


def test_p99_from_histogram_deltas() -> None:
    """p99 is the upper bound of the bucket holding the 99th percentile of the new answers."""
    before = outcome_totals({"gateway": {"latency": {"hello/v2": [5] + [0] * 11}}}, ["hello/v2"])
    grown = [105, 0, 0, 0, 0, 0, 2] + [0] * 5  # 100 more under 5 ms, 2 between 0.25 and 0.5 s
    after = outcome_totals({"gateway": {"latency": {"hello/v2": grown}}}, ["hello/v2"])
    assert latency_p99(before, after) == 0.5
    assert latency_p99(after, after) is None
    assert quantile([0] * 11 + [3], 0.99) == float("inf")


def test_a_tag_names_its_revision_as_a_subset() -> None:
    tagged = [
        *revisions("hello", "v1"),
        Service(name="hello", revision="v2", app="a:a", tags=("candidate",)),
    ]
    assert subset_revisions("hello", "candidate", None, tagged) == ["hello/v2"]
    got = set_weights("hello", {"v1": 90, "candidate": 10}, None, None, tagged)
    assert got.http[0].route == (to("hello", "v1", 90), to("hello", "candidate", 10))
