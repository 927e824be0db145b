"""The controller's pure placement of instances on nodes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.platform.scheduler import place


def test_spreads_replicas_across_nodes() -> None:
    """Three replicas on three nodes land one per node."""
    assert place({"hello/v1": 3}, ["a", "b", "c"]) == {
        "a": {"hello/v1": 1},
        "b": {"hello/v1": 1},
        "c": {"hello/v1": 1},
    }


def test_keeps_existing_placement() -> None:
    """An instance already on a live node stays there."""
    got = place({"hello/v1": 1}, ["a", "b"], {"b": {"hello/v1": 1}})
    assert got == {"a": {}, "b": {"hello/v1": 1}}


def test_replaces_instances_of_dead_nodes() -> None:
    """Instances placed on a node that is gone are placed on live ones."""
    got = place({"hello/v1": 2}, ["a"], {"a": {"hello/v1": 1}, "dead": {"hello/v1": 1}})
    assert got == {"a": {"hello/v1": 2}}


def test_no_nodes_no_placement() -> None:
    """Without live nodes nothing is placed."""
    assert place({"hello/v1": 2}, []) == {}


@given(
    st.dictionaries(st.sampled_from(["a/1", "b/1", "c/1"]), st.integers(0, 7)),
    st.sets(st.sampled_from(["n1", "n2", "n3", "n4"]), min_size=1),
)
def test_places_exactly_what_is_wanted_and_balanced(
    wanted: dict[str, int], nodes: set[str]
) -> None:
    """Every wanted instance is placed once, and no node has two more of a revision than another."""
    got = place(wanted, nodes)
    for rev, count in wanted.items():
        per_node = [got[n].get(rev, 0) for n in nodes]
        assert sum(per_node) == count
        assert max(per_node) - min(per_node) <= 1


def test_no_pruning_right_after_store_restart_or_regained_lead() -> None:
    """Leases are pruned only after owners had a full grace period to re-assert them."""
    from shoal.platform.controller import may_prune

    assert not may_prune(now=103.0, steady_since=100.0, store_uptime=500.0, grace=7.0)
    assert not may_prune(now=200.0, steady_since=100.0, store_uptime=2.0, grace=7.0)
    assert may_prune(now=107.0, steady_since=100.0, store_uptime=7.0, grace=7.0)
