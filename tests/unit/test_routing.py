"""The routing snapshot: host lookup, rule matching, clusters, weights and balancer carry-over."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.balancer import LeastRequestBalancer, RoundRobinBalancer
from shoal.mesh.clusters import Cluster, merge_policy
from shoal.mesh.forward import redirect_location
from shoal.mesh.matching import RouteMatch, apply_rewrite, normalize_host
from shoal.mesh.routing import RoutingTable
from shoal.resources.endpoint import Endpoint, InstanceState
from shoal.resources.model import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRoute,
    OutlierDetection,
    Rewrite,
    RouteDestination,
    Service,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)


def svc(name: str) -> Service:
    """A Service resource named ``name``."""
    return Service(name=name, revision="v1", app="app:app")


def ep(
    service: str, n: int, *, state: InstanceState = "ready", version: str = "v1", weight: int = 1
) -> Endpoint:
    """Endpoint ``<service>-<n>`` labelled ``app``/``version``."""
    return Endpoint(
        id=f"{service}-{n}",
        service=service,
        revision=version,
        node="node-1",
        address="127.0.0.1",
        port=20000 + n,
        labels=(("app", service), ("version", version)),
        weight=weight,
        state=state,
    )


def to(host: str, subset: str | None = None, weight: int = 100) -> RouteDestination:
    """A weighted route destination."""
    return RouteDestination(destination=Destination(host=host, subset=subset), weight=weight)


def rule(
    *dests: RouteDestination,
    match: Iterable[HTTPMatchRequest] = (),
    rewrite: Rewrite | None = None,
    mirror: Destination | None = None,
) -> HTTPRoute:
    """An http[] rule with the given matches and destinations."""
    return HTTPRoute(match=tuple(match), route=dests, rewrite=rewrite, mirror=mirror)


def uri(**kw: str) -> HTTPMatchRequest:
    """A match block on the URI only."""
    return HTTPMatchRequest(uri=StringMatch(**kw))


def vs(name: str, hosts: Iterable[str], *rules: HTTPRoute) -> VirtualService:
    """A VirtualService over ``hosts``."""
    return VirtualService(name=name, hosts=tuple(hosts), http=rules)


def build(
    services: Iterable[Service] = (),
    virtual_services: Iterable[VirtualService] = (),
    rules: Iterable[DestinationRule] = (),
    endpoints: Iterable[Endpoint] = (),
    previous: RoutingTable | None = None,
) -> RoutingTable:
    """RoutingTable.build with keyword-friendly defaults."""
    return RoutingTable.build(services, virtual_services, rules, endpoints, previous=previous)


def routes(*rules: HTTPRoute) -> RoutingTable:
    """A table of SERVICES with one VirtualService ``v`` on host ``hello``."""
    return build(SERVICES, [vs("v", ["hello"], *rules)])


def resolve(
    table: RoutingTable,
    path: str = "/",
    *,
    host: str = "hello",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> RouteMatch | None:
    """table.resolve with defaults."""
    return table.resolve(host, method, path, headers or {})


def hit(table: RoutingTable, path: str = "/", *, host: str = "hello") -> RouteMatch:
    """table.resolve for a request that must have a route."""
    match = resolve(table, path, host=host)
    if match is None:
        raise AssertionError(f"no route for {host}{path}")
    return match


def must(cluster: Cluster | None) -> Cluster:
    """A cluster that must exist."""
    if cluster is None:
        raise AssertionError("no such cluster")
    return cluster


def target(match: RouteMatch | None) -> str | None:
    """The first destination service of a match, or None."""
    return None if match is None else match.clusters[0].service


SERVICES = [svc("hello"), svc("a"), svc("b"), svc("c")]


def test_first_matching_rule_wins() -> None:
    """Rules are tried in order: a broad prefix listed first shadows a narrower one after it."""
    table = routes(
        rule(to("a"), match=[uri(prefix="/api")]),
        rule(to("b"), match=[uri(prefix="/api/v2")]),
        rule(to("c")),
    )
    match = resolve(table, "/api/v2/x")
    assert match is not None and match.route_index == 0 and target(match) == "a"
    assert target(resolve(table, "/other")) == "c"


@PROPERTY
@given(
    prefixes=st.lists(st.text("ab/", min_size=1, max_size=3), min_size=1, max_size=6),
    path=st.text("ab/", max_size=6),
)
def test_first_match_property(prefixes: list[str], path: str) -> None:
    """For any prefix rules, the matched rule is the first whose prefix the path starts with."""
    rules = [rule(to("a"), match=[uri(prefix=p)]) for p in prefixes]
    match = resolve(routes(*rules), "/" + path)
    expected = next((i for i, p in enumerate(prefixes) if ("/" + path).startswith(p)), None)
    assert (None if match is None else match.route_index) == expected


def test_block_or_and_semantics() -> None:
    """A rule matches if any block does; a block needs all its conditions (uri AND method)."""
    block = HTTPMatchRequest(uri=StringMatch(prefix="/w"), method=StringMatch(exact="POST"))
    table = routes(rule(to("a"), match=[block, uri(exact="/x")]))
    assert resolve(table, "/write", method="POST") is not None
    assert resolve(table, "/write", method="GET") is None
    second = resolve(table, "/x", method="GET")
    assert second is not None and second.match_index == 1


def test_uri_exact_prefix_regex() -> None:
    """exact is whole-path equality, prefix is startswith, regex must match the whole path."""
    table = routes(
        rule(to("a"), match=[uri(exact="/hello")]),
        rule(to("b"), match=[uri(regex=r"/users/[0-9]+")]),
        rule(to("c"), match=[uri(prefix="/static/")]),
    )
    assert target(resolve(table, "/hello")) == "a"
    assert resolve(table, "/hello/") is None
    assert target(resolve(table, "/users/42")) == "b"
    assert resolve(table, "/users/42/x") is None  # fullmatch, not search
    assert resolve(table, "/x/users/42") is None
    assert target(resolve(table, "/static/app.js")) == "c"


def test_ignore_uri_case() -> None:
    """ignoreUriCase folds case for exact and prefix URI matches."""
    exact = HTTPMatchRequest(uri=StringMatch(exact="/Login"), ignore_uri_case=True)
    prefix = HTTPMatchRequest(uri=StringMatch(prefix="/API"), ignore_uri_case=True)
    table = build(
        SERVICES, [vs("v", ["hello"], rule(to("a"), match=[exact]), rule(to("b"), match=[prefix]))]
    )
    assert target(resolve(table, "/LOGIN")) == "a"
    assert target(resolve(table, "/api/x")) == "b"
    strict = routes(rule(to("a"), match=[uri(exact="/Login")]))
    assert resolve(strict, "/login") is None


def test_method_and_authority_match() -> None:
    """method is a case-sensitive StringMatch; authority matches the Host value as received."""
    table = routes(
        rule(to("a"), match=[HTTPMatchRequest(method=StringMatch(regex="GET|HEAD"))]),
        rule(to("b"), match=[HTTPMatchRequest(authority=StringMatch(exact="hello:8080"))]),
    )
    assert target(resolve(table, method="HEAD")) == "a"
    assert resolve(table, method="get") is None
    assert target(resolve(table, method="PUT", host="hello:8080")) == "b"


def test_header_matches() -> None:
    """Headers: exact/prefix/regex on the value, an empty StringMatch checks presence."""
    blocks = [
        HTTPMatchRequest(headers=(("End-User", StringMatch(exact="jason")),)),
        HTTPMatchRequest(
            headers=(("x-canary", StringMatch()), ("x-env", StringMatch(prefix="st")))
        ),
        HTTPMatchRequest(headers=(("user-agent", StringMatch(regex=".*Firefox.*")),)),
    ]
    table = build(
        SERVICES,
        [vs("v", ["hello"], *(rule(to(n), match=[b]) for n, b in zip("abc", blocks, strict=True)))],
    )
    assert target(resolve(table, headers={"end-user": "jason"})) == "a"
    assert resolve(table, headers={"end-user": "json"}) is None
    assert target(resolve(table, headers={"x-canary": "", "x-env": "staging"})) == "b"
    assert resolve(table, headers={"x-env": "staging"}) is None
    assert target(resolve(table, headers={"user-agent": "Mozilla Firefox/1"})) == "c"
    assert resolve(table, headers={}) is None


def test_vs_without_match_falls_through_to_none() -> None:
    """When a VirtualService covers the host but no rule matches, there is no route (Istio 404)."""
    table = routes(rule(to("a"), match=[uri(exact="/a")]))
    assert resolve(table, "/b") is None


def test_host_normalised_and_short_names() -> None:
    """Host loses port and case; VS host 'hello' covers 'hello.<anything>' but not 'hellox'."""
    table = routes(rule(to("a")))
    for host in ["HELLO:8080", "hello.default.svc.cluster.local", "hello.default.", "hello"]:
        assert target(resolve(table, host=host)) == "a", host
    assert resolve(table, host="hellox") is None


@pytest.mark.parametrize(
    "written", ["hello.default.svc.cluster.local", "hello.default.svc", "hello.default"]
)
def test_a_virtual_service_on_a_long_name_is_reached_by_the_short_one(written: str) -> None:
    """Istio's docs write hosts in full; requests say ``Host: hello`` (or any long form): the
    rules apply to all of them. An external name is not shortened."""
    table = build(SERVICES, [vs("v", [written], rule(to("a"))), vs("x", ["b.example.com"])])
    for host in ["hello", "hello.default.svc.cluster.local", "HELLO.default:80"]:
        assert target(resolve(table, host=host)) == "a", host
    assert target(resolve(table, host="b")) == "b"  # b's own default route, not x's


def test_host_precedence() -> None:
    """exact beats short name beats the longest wildcard suffix beats '*'."""
    table = build(
        SERVICES,
        [
            vs("any", ["*"], rule(to("c"))),
            vs("wide", ["*.example.com"], rule(to("b"))),
            vs("narrow", ["*.api.example.com"], rule(to("a"))),
            vs("exact", ["www.api.example.com"], rule(to("hello"))),
            vs("short", ["www"], rule(to("hello"))),
        ],
    )
    assert hit(table, host="www.api.example.com").virtual_service == "exact"
    assert hit(table, host="www.example.com").virtual_service == "short"
    assert hit(table, host="x.api.example.com").virtual_service == "narrow"
    assert hit(table, host="x.example.com").virtual_service == "wide"
    assert hit(table, host="example.com").virtual_service == "any"


def test_duplicate_host_first_by_name_wins() -> None:
    """Two VirtualServices on one host: the first by name owns it, whatever the input order."""
    table = build(
        SERVICES, [vs("zeta", ["hello"], rule(to("b"))), vs("alpha", ["hello"], rule(to("a")))]
    )
    assert target(resolve(table)) == "a"


def test_default_route_without_virtual_service() -> None:
    """A Service no VirtualService covers gets a default route to all its ready endpoints."""
    eps = [ep("hello", 1), ep("hello", 2), ep("hello", 3, state="starting")]
    table = build(SERVICES, endpoints=eps)
    for host in ["hello", "hello.default.svc.cluster.local", "Hello:80"]:
        match = resolve(table, "/anything", host=host)
        assert match is not None and match.virtual_service is None
        assert match.clusters[0].endpoints == (eps[0], eps[1])
    assert resolve(table, host="nobody.example.com") is None
    assert resolve(table, host="hellox") is None


def test_unknown_host_is_none() -> None:
    """A host that no VirtualService and no Service covers has no route."""
    table = routes(rule(to("a")))
    assert resolve(table, host="unknown") is None
    assert resolve(table, host="") is None


def test_only_ready_endpoints_in_clusters() -> None:
    """starting, draining and unhealthy instances are left out; endpoints are sorted by key."""
    eps = [
        ep("a", 3),
        ep("a", 1, state="draining"),
        ep("a", 2),
        ep("a", 4, state="unhealthy"),
        ep("a", 5, state="starting"),
    ]
    table = build(SERVICES, [vs("v", ["hello"], rule(to("a")))], endpoints=eps)
    cluster = table.cluster("a")
    assert cluster is not None
    assert [e.id for e in cluster.endpoints] == ["a-2", "a-3"]


def dr(
    *subsets: Subset, policy: TrafficPolicy | None = None, host: str = "hello"
) -> DestinationRule:
    """A DestinationRule for ``host`` with subsets selecting by version."""
    return DestinationRule(
        name="dr-" + host, host=host, subsets=subsets, traffic_policy=policy or TrafficPolicy()
    )


def version(name: str, policy: TrafficPolicy | None = None) -> Subset:
    """A subset selecting ``version: <name>``."""
    return Subset(name=name, labels=(("version", name),), traffic_policy=policy)


def test_subset_selects_by_labels() -> None:
    """A subset's cluster holds the ready endpoints whose labels include the subset's labels."""
    eps = [ep("hello", 1, version="v1"), ep("hello", 2, version="v2"), ep("hello", 3, version="v2")]
    table = build(
        SERVICES,
        [
            vs(
                "v",
                ["hello"],
                rule(to("hello", "v1", 90), to("hello.default.svc.cluster.local", "v2", 10)),
            )
        ],
        [dr(version("v1"), version("v2"), host="hello.default.svc.cluster.local")],
        eps,
    )
    match = resolve(table)
    assert match is not None
    v1, v2 = match.clusters
    assert (v1.service, v1.subset, v2.service, v2.subset) == ("hello", "v1", "hello", "v2")
    assert v1.endpoints == (eps[0],) and v2.endpoints == (eps[1], eps[2])


def test_unknown_subset_and_service() -> None:
    """A subset no DestinationRule defines, or a missing service, gives an empty flagged cluster."""
    table = build(
        SERVICES,
        [
            vs(
                "v",
                ["hello"],
                rule(to("hello", "v9"), match=[uri(prefix="/a")]),
                rule(to("ghost"), match=[uri(prefix="/b")]),
                rule(to("a", "v1")),
            )
        ],
        [dr(version("v1"))],
        [ep("hello", 1), ep("a", 1)],
    )
    hello = hit(table, "/a").clusters[0]
    assert hello.unknown_subset and hello.endpoints == () and not hello.unknown_service
    ghost = hit(table, "/b").clusters[0]
    assert ghost.unknown_service and ghost.endpoints == ()
    a = hit(table, "/c").clusters[0]
    # No DestinationRule for "a" at all, but a revision is a subset by its own name.
    assert not a.unknown_subset and [e.id for e in a.endpoints] == ["a-1"]
    assert a.revisions == ("a/v1",)


def test_service_named_by_whole_host() -> None:
    """A Service named by the full destination host wins over the first-label reading."""
    table = build([svc("api"), svc("api.v2")], [vs("v", ["x"], rule(to("api.v2")))])
    assert target(resolve(table, host="x")) == "api.v2"


def test_subset_policy_overrides_field_by_field() -> None:
    """A subset's policy replaces the rule's fields it sets and keeps the others."""
    outlier = OutlierDetection(consecutive_5xx_errors=2)
    table = build(
        SERVICES,
        [vs("v", ["hello"], rule(to("hello", "v1", 50), to("hello", "v2", 50)))],
        [
            dr(
                version("v1", TrafficPolicy(load_balancer="RANDOM")),
                version("v2", TrafficPolicy(outlier_detection=outlier)),
                policy=TrafficPolicy(load_balancer="LEAST_REQUEST", failure_threshold=3),
            )
        ],
    )
    v1, v2 = table.cluster("hello", "v1"), table.cluster("hello", "v2")
    assert v1 is not None and v2 is not None
    assert v1.load_balancer == "RANDOM" and v1.policy.failure_threshold == 3
    assert v2.load_balancer == "LEAST_REQUEST" and v2.policy.outlier_detection == outlier
    assert isinstance(table.balancer_for(v2), LeastRequestBalancer)
    assert merge_policy(TrafficPolicy(), TrafficPolicy()) == TrafficPolicy()


def test_pick_follows_route_weights() -> None:
    """table.pick splits 90/10 over 10,000 seeded draws; a lone destination takes everything."""
    table = routes(rule(to("a", weight=90), to("b", weight=10)))
    match = resolve(table)
    assert match is not None
    rng = random.Random(7)
    counts = Counter(must(table.pick(match, rng)).service for _ in range(10_000))
    assert abs(counts["a"] / 100 - 90) < 2
    lone = resolve(routes(rule(to("a", weight=0))))
    assert lone is not None and table.pick(lone, rng) == lone.clusters[0]


def test_pick_without_positive_weight_is_none() -> None:
    """A route whose destinations all weigh zero, or that has none, picks no cluster."""
    table = routes(rule(to("a", weight=0), to("b", weight=0)))
    match = resolve(table)
    assert match is not None and table.pick(match, random.Random(0)) is None
    empty = RouteMatch(virtual_service="v", route_index=0, route=HTTPRoute())
    assert table.pick(empty, random.Random(0)) is None


def test_resolve_returns_prebuilt_matches() -> None:
    """resolve hands out the objects built in advance, and clusters are shared across routes."""
    table = build(
        SERVICES, [vs("v", ["hello"], rule(to("a"), match=[uri(prefix="/x")]), rule(to("a")))]
    )
    first, again, other = resolve(table, "/x"), resolve(table, "/x"), resolve(table, "/y")
    assert first is again
    assert first is not None and other is not None
    assert first.clusters[0] is other.clusters[0]
    assert table.balancer_for(first.clusters[0]) is table.balancer_for(other.clusters[0])


def test_balancer_state_carried_across_rebuild() -> None:
    """A rebuild keeps balancer objects of clusters whose policy is unchanged, resets the others."""
    eps = [ep("a", 1), ep("a", 2), ep("b", 1)]
    rr_rule = dr(policy=TrafficPolicy(load_balancer="ROUND_ROBIN"), host="a")
    lr_rule = dr(policy=TrafficPolicy(load_balancer="LEAST_REQUEST"), host="b")
    old = build(SERVICES, rules=[rr_rule, lr_rule], endpoints=eps)
    a_cluster, b_cluster = old.cluster("a"), old.cluster("b")
    assert a_cluster is not None and b_cluster is not None
    rr = old.balancer_for(a_cluster)
    assert rr.pick(a_cluster.endpoints, random.Random(0)) == eps[0]
    old.balancer_for(b_cluster).on_start(eps[2])

    new = build(SERVICES, rules=[rr_rule, lr_rule], endpoints=[*eps, ep("a", 3)], previous=old)
    a_new, b_new = new.cluster("a"), new.cluster("b")
    assert a_new is not None and b_new is not None and len(a_new.endpoints) == 3
    assert new.balancer_for(a_new) is rr
    assert rr.pick(a_new.endpoints, random.Random(0)) == eps[1]  # counter went on from 1
    least = new.balancer_for(b_new)
    assert isinstance(least, LeastRequestBalancer) and least.in_flight(eps[2]) == 1

    changed = build(
        SERVICES,
        rules=[dr(policy=TrafficPolicy(load_balancer="RANDOM"), host="a")],
        endpoints=eps,
        previous=new,
    )
    assert changed.balancer_for(must(changed.cluster("a"))).policy == "RANDOM"
    assert isinstance(changed.balancer_for(must(changed.cluster("b"))), RoundRobinBalancer)


def test_balancer_for_foreign_cluster_raises() -> None:
    """Asking for the balancer of a cluster the table does not hold is a loud KeyError."""
    with pytest.raises(KeyError, match="not in this routing table"):
        RoutingTable().balancer_for(Cluster(service="nowhere"))


def test_rewrite_uri() -> None:
    """rewrite.uri replaces the matched prefix, or the whole path after an exact/regex match."""
    rewrite = Rewrite(uri="/v2/")
    table = routes(
        rule(to("a"), match=[uri(prefix="/api/")], rewrite=rewrite),
        rule(to("a"), match=[uri(regex="/old.*")], rewrite=Rewrite(uri="/new")),
        rule(to("a")),
    )
    assert hit(table, "/api/users").rewrite_path("/api/users") == "/v2/users"
    assert hit(table, "/old/x").rewrite_path("/old/x") == "/new"
    assert hit(table, "/keep").rewrite_path("/keep") == "/keep"
    assert apply_rewrite(HTTPRoute(rewrite=Rewrite(uri="/")), "/api", "/api/x") == "//x"


def test_mirror_is_resolved() -> None:
    """route.mirror becomes a cluster with its own balancer."""
    table = build(
        SERVICES,
        [vs("v", ["hello"], rule(to("a"), mirror=Destination(host="b")))],
        endpoints=[ep("b", 1)],
    )
    match = resolve(table)
    assert match is not None and match.mirror is not None
    assert match.mirror.endpoints == (ep("b", 1),)
    assert table.balancer_for(match.mirror).policy == "ROUND_ROBIN"


def test_bad_config_names_the_field() -> None:
    """An uncompilable regex or wildcard is a ValueError naming the VirtualService and field."""
    bad_regex = vs("broken", ["hello"], rule(to("a"), match=[uri(regex="(")]))
    with pytest.raises(ValueError, match=r"broken: http\[0\]\.match\[0\]\.uri\.regex"):
        build(SERVICES, [bad_regex])
    with pytest.raises(ValueError, match="unsupported wildcard"):
        build(SERVICES, [vs("w", ["foo.*.com"], rule(to("a")))])


def test_normalize_host() -> None:
    """normalize_host lower-cases and strips ports, including after IPv6 literals."""
    assert normalize_host("Example.COM:8443") == "example.com"
    assert normalize_host("[::1]:8080") == "[::1]"
    assert normalize_host("hello.") == "hello"


def test_subset_can_set_round_robin_over_rule_policy() -> None:
    """An explicit ROUND_ROBIN on a subset overrides the rule's LEAST_REQUEST; unset inherits."""
    base = TrafficPolicy(load_balancer="LEAST_REQUEST")
    assert merge_policy(base, TrafficPolicy(load_balancer="ROUND_ROBIN")).load_balancer == (
        "ROUND_ROBIN"
    )
    assert merge_policy(base, TrafficPolicy()).load_balancer == "LEAST_REQUEST"


@pytest.mark.parametrize(
    ("redirect", "authority", "location"),
    [
        (HTTPRedirect(uri="/new"), "echo:8080", "http://echo:8080/new?a=1"),
        (HTTPRedirect(authority="b.example"), "echo:8080", "http://b.example:8080/old?a=1"),
        (HTTPRedirect(scheme="https"), "echo:8080", "https://echo/old?a=1"),
        (HTTPRedirect(scheme="https", port=8443), "echo", "https://echo:8443/old?a=1"),
        (HTTPRedirect(uri="/x"), "[::1]", "http://[::1]/x?a=1"),
    ],
)
def test_redirect_location_keeps_what_it_does_not_replace(
    redirect: HTTPRedirect, authority: str, location: str
) -> None:
    """Each part a redirect names is replaced; the query is kept, the port too unless the
    scheme changes without a port given."""
    assert redirect_location(redirect, "http", authority, "/old", "a=1") == location


def test_query_params_match_decoded_values_by_exact_name() -> None:
    """queryParams compare the decoded value of a parameter (its name as written: case
    matters); a missing parameter does not match; other blocks do not parse the query."""
    block = HTTPMatchRequest(
        query_params=(("user", StringMatch(exact="ana b")), ("v", StringMatch(regex="[0-9]+")))
    )
    table = routes(rule(to("b"), match=[block]), rule(to("a")))
    assert target(table.resolve("hello", "GET", "/", {}, "user=ana%20b&v=12")) == "b"
    assert target(table.resolve("hello", "GET", "/", {}, "user=ana+b&v=1")) == "b"
    assert target(table.resolve("hello", "GET", "/", {}, "User=ana%20b&v=12")) == "a"
    assert target(table.resolve("hello", "GET", "/", {}, "user=ana%20b&v=x")) == "a"
    assert target(table.resolve("hello", "GET", "/", {}, "")) == "a"


def test_source_labels_match_the_calling_workloads_labels() -> None:
    """sourceLabels hold when the caller's labels include every pair; a caller without labels
    (the gateway) never matches such a block."""
    block = HTTPMatchRequest(source_labels=(("app", "reviews"), ("version", "v2")))
    table = routes(rule(to("b"), match=[block]), rule(to("a")))
    caller = {"app": "reviews", "version": "v2", "tier": "back"}
    assert target(table.resolve("hello", "GET", "/", {}, "", caller)) == "b"
    assert target(table.resolve("hello", "GET", "/", {}, "", {"app": "reviews"})) == "a"
    assert (
        target(table.resolve("hello", "GET", "/", {}, "", {"app": "reviews", "version": "v3"}))
        == "a"
    )
    assert target(table.resolve("hello", "GET", "/", {})) == "a"


def test_a_service_without_a_virtual_service_goes_to_its_latest_ready_revision() -> None:
    """As in Knative: the latest applied revision with a ready instance takes all the traffic
    (the latest applied one while none is ready); a VirtualService's destination without a
    subset is still every ready instance, as in Istio."""
    old = Service(name="hello", revision="old", app="app:app", created=1)
    new = Service(name="hello", revision="new", app="app:app", created=2)
    both = [ep("hello", 1, version="old"), ep("hello", 2, version="new")]
    only_old = [both[0], ep("hello", 2, version="new", state="starting")]

    def served(endpoints: list[Endpoint], *vss: VirtualService) -> set[str]:
        table = build([old, new], list(vss), [], endpoints)
        match = table.resolve("hello", "GET", "/", {})
        assert match is not None
        return {e.revision for e in match.clusters[0].endpoints}

    assert served(both) == {"new"}
    assert served(only_old) == {"old"}
    cold = build([old, new], [], [], []).resolve("hello", "GET", "/", {})
    assert cold is not None and cold.clusters[0].revisions == ("hello/new",)
    assert served(both, vs("hello", ["hello"], rule(to("hello")))) == {"old", "new"}


def test_a_tag_is_a_subset_of_the_revision_it_names() -> None:
    """``subset: candidate`` selects the revision tagged candidate, without a DestinationRule."""
    old = Service(name="hello", revision="old", app="app:app", created=1)
    new = Service(name="hello", revision="new", app="app:app", created=2, tags=("candidate",))
    endpoints = [ep("hello", 1, version="old"), ep("hello", 2, version="new")]
    table = build([old, new], [vs("v", ["hello"], rule(to("hello", "candidate")))], [], endpoints)
    match = table.resolve("hello", "GET", "/", {})
    assert match is not None
    cluster = match.clusters[0]
    assert [e.revision for e in cluster.endpoints] == ["new"] and not cluster.unknown_subset


def test_default_hosts_go_to_a_service_name_then_the_first_tagged_revision() -> None:
    """Knative's tag hosts: ``<tag>-<service>`` reaches the tagged revision, unless a service
    has that name (it keeps its own host) or an earlier tagged revision (by service, then
    revision name) holds it."""
    a1 = Service(name="a", revision="v1", app="app:app", created=1, tags=("canary",))
    a2 = Service(name="a", revision="v2", app="app:app", created=2, tags=("canary", "beta"))
    ab = Service(name="a-b", revision="v1", app="app:app", created=3, tags=("x",))
    b = Service(name="b", revision="v1", app="app:app", created=4, tags=("x-a", "y"))
    endpoints = [ep("a", 1, version="v1"), ep("a", 2, version="v2")]
    endpoints += [ep("a-b", 3, version="v1"), ep("b", 4, version="v1")]

    def served(table: RoutingTable, host: str) -> tuple[str | None, ...]:
        match = table.resolve(host, "GET", "/", {})
        assert match is not None, host
        return match.clusters[0].revisions

    table = build([a2, ab, b, a1], [], [], endpoints)
    assert served(table, "canary-a") == ("a/v1",)  # (the first by revision name)
    assert served(table, "beta-a") == ("a/v2",)
    assert served(table, "x-a-b") == ("a-b/v1",)  # (service a-b's tag before b's)
    assert served(table, "y-b") == ("b/v1",)
    named = Service(name="canary-a", revision="v1", app="app:app", created=5)
    table = build([a1, a2, named], [], [], [*endpoints, ep("canary-a", 5, version="v1")])
    assert served(table, "canary-a") == ("canary-a/v1",)
