"""``shoal weights`` as a pure edit of a VirtualService."""

from __future__ import annotations

import pytest

from shoal.errors import UserError
from shoal.platform.model import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    RouteDestination,
    StringMatch,
    Subset,
    VirtualService,
)
from shoal.platform.weights import find_virtual_service, parse_weights, set_weights

RULE = DestinationRule(
    name="hello",
    host="hello",
    subsets=(
        Subset(name="v1", labels=(("version", "v1"),)),
        Subset(name="v2", labels=(("version", "v2"),)),
    ),
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
    got = set_weights("hello", {"v1": 80, "v2": 20}, vs, RULE)
    assert got.http[0] == other
    assert got.http[1].route == (to("hello", "v1", 80), to("hello", "v2", 20))


def test_creates_virtual_service_when_missing() -> None:
    """Without a VirtualService one named after the service is made."""
    got = set_weights("hello", {"v1": 100}, None, RULE)
    assert got.hosts == ("hello",) and got.http[0].route == (to("hello", "v1", 100),)


def test_unknown_subset_is_an_error() -> None:
    """A subset no DestinationRule defines is refused, naming the defined ones."""
    with pytest.raises(UserError, match="defined: v1, v2"):
        set_weights("hello", {"v3": 100}, None, RULE)


def test_find_virtual_service_by_host() -> None:
    """The VirtualService is found by its hosts first."""
    a = VirtualService(name="edge", hosts=("hello",), http=())
    assert find_virtual_service("hello", [a]) == a
