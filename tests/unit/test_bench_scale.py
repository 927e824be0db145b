"""The scale harness's synthetic cluster is one Shoal accepts and routes, and each column
measures an update that happened (bench/scale.py)."""

from __future__ import annotations

from bench.scale import PER_SERVICE, measure, view_of
from shoal.mesh.proxy_state import ProxyState, Route


def test_the_synthetic_view_is_routed() -> None:
    view = view_of(3 * PER_SERVICE)
    state = ProxyState()
    state.update(view)
    assert state.applied and len(view.instances) == 3 * PER_SERVICE
    subsets = {key for key in state.snapshot.table.clusters if key[0] == "svc1"}
    assert subsets == {("svc1", "v1"), ("svc1", "v2")}
    route = state.decide("svc1", "GET", "/", {}, "", None, None)
    assert isinstance(route, Route) and route.match.weights == (90, 10)


def test_every_column_has_a_cost() -> None:
    row = measure(2 * PER_SERVICE, repeat=1)
    assert set(row) == {"full build", "registry change", "config change", "new service"}
    assert all(ms >= 0 for ms in row.values())
