"""The controller's pure placement of instances on nodes, and the node flags it reads."""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.platform.control.scheduler import Node, eligible, place, unplaced_reason
from shoal.platform.node import node_capacity, node_labels, node_record


def test_spreads_replicas_across_nodes() -> None:
    """Three replicas on three nodes land one per node."""
    assert place({"hello/v1": 3}, ["a", "b", "c"]).placements == {
        "a": {"hello/v1": 1},
        "b": {"hello/v1": 1},
        "c": {"hello/v1": 1},
    }


def test_keeps_existing_placement() -> None:
    """An instance already on a live node stays there."""
    got = place({"hello/v1": 1}, ["a", "b"], {"b": {"hello/v1": 1}}).placements
    assert got == {"a": {}, "b": {"hello/v1": 1}}


def test_replaces_instances_of_dead_nodes() -> None:
    """Instances placed on a node that is gone are placed on live ones."""
    got = place({"hello/v1": 2}, ["a"], {"a": {"hello/v1": 1}, "dead": {"hello/v1": 1}}).placements
    assert got == {"a": {"hello/v1": 2}}


def test_no_nodes_no_placement() -> None:
    """Without live nodes nothing is placed."""
    assert place({"hello/v1": 2}, []).placements == {}
    assert place({"hello/v1": 2}, []).unplaced == {"hello/v1": 2}


@given(
    st.dictionaries(st.sampled_from(["a/1", "b/1", "c/1"]), st.integers(0, 7)),
    st.sets(st.sampled_from(["n1", "n2", "n3", "n4"]), min_size=1),
)
def test_places_exactly_what_is_wanted_and_balanced(
    wanted: dict[str, int], nodes: set[str]
) -> None:
    """Every wanted instance is placed once, and no node has two more of a revision than another."""
    got = place(wanted, nodes).placements
    for rev, count in wanted.items():
        per_node = [got[n].get(rev, 0) for n in nodes]
        assert sum(per_node) == count
        assert max(per_node) - min(per_node) <= 1


def test_no_pruning_right_after_store_restart_or_regained_lead() -> None:
    """Leases are pruned only after owners had a full grace period to re-assert them."""
    from shoal.platform.control.controller import may_prune

    assert not may_prune(now=103.0, steady_since=100.0, store_uptime=500.0, grace=7.0)
    assert not may_prune(now=200.0, steady_since=100.0, store_uptime=2.0, grace=7.0)
    assert may_prune(now=107.0, steady_since=100.0, store_uptime=7.0, grace=7.0)


# ---------------------------------------------------------------------------------------------
# Node labels, selectors and capacity


def test_selector_places_only_on_nodes_carrying_every_pair() -> None:
    """A revision lands only on nodes whose labels include all of its selector's pairs."""
    nodes = {
        "a": Node(labels={"zone": "eu"}),
        "b": Node(labels={"zone": "us", "disk": "ssd"}),
        "c": Node(labels={"zone": "eu", "disk": "ssd"}),
        "d": Node(),
    }
    got = place(
        {"eu/v1": 4, "fast/v1": 2, "any/v1": 4},
        nodes,
        selectors={"eu/v1": {"zone": "eu"}, "fast/v1": {"zone": "eu", "disk": "ssd"}},
    )
    assert got.unplaced == {}
    assert {n for n, revs in got.placements.items() if "eu/v1" in revs} == {"a", "c"}
    assert got.placements["c"]["fast/v1"] == 2
    assert [got.placements[n]["any/v1"] for n in "abcd"] == [1, 1, 1, 1]


def test_capacity_limits_the_instances_of_all_revisions_together() -> None:
    """No node holds more instances than its capacity; what does not fit is reported."""
    nodes = {"a": Node(capacity=1), "b": Node(capacity=2), "c": Node(capacity=0)}
    got = place({"x/1": 2, "y/1": 2}, nodes)
    assert {n: sum(revs.values()) for n, revs in got.placements.items()} == {"a": 1, "b": 2, "c": 0}
    assert sum(got.unplaced.values()) == 1


def test_plain_node_ids_are_unlabelled_and_unlimited() -> None:
    """Bare node ids place exactly as nodes without labels or capacity."""
    wanted = {"x/1": 5, "y/1": 2}
    assert place(wanted, ["a", "b"]) == place(wanted, {"a": Node(), "b": Node()})


def test_keeps_instances_on_nodes_still_eligible_and_moves_the_rest() -> None:
    """Valid placements stay put; instances on a node whose labels no longer match move."""
    nodes = {"a": Node(labels={"zone": "eu"}), "b": Node(labels={"zone": "us"}), "c": Node()}
    current = {"a": {"x/1": 1}, "b": {"x/1": 2}, "c": {"x/1": 1}}
    got = place({"x/1": 3}, nodes, current, {"x/1": {"zone": "eu"}})
    assert got.placements == {"a": {"x/1": 3}, "b": {}, "c": {}}
    assert got.unplaced == {}


def test_capacity_shrink_drops_the_excess_from_the_largest_revision() -> None:
    """A node over its (new) capacity gives up instances of the revision it holds most of,
    and those are placed elsewhere when there is room."""
    nodes = {"a": Node(capacity=2), "b": Node(capacity=1)}
    got = place({"x/1": 3, "y/1": 1}, nodes, {"a": {"x/1": 3, "y/1": 1}})
    assert got.placements == {"a": {"x/1": 1, "y/1": 1}, "b": {"x/1": 1}}
    assert got.unplaced == {"x/1": 1}


def test_scaling_down_keeps_replicas_spread() -> None:
    """Fewer wanted instances are taken from the nodes holding most of the revision."""
    got = place({"x/1": 2}, ["a", "b"], {"a": {"x/1": 2}, "b": {"x/1": 2}})
    assert got.placements == {"a": {"x/1": 1}, "b": {"x/1": 1}}


def test_confined_revisions_are_placed_before_those_that_run_anywhere() -> None:
    """A revision its selector confines to one small node gets it; the other goes elsewhere."""
    nodes = {"a": Node(labels={"gpu": "yes"}, capacity=1), "b": Node(capacity=1)}
    got = place({"any/1": 1, "ml/1": 1}, nodes, selectors={"ml/1": {"gpu": "yes"}})
    assert got.placements == {"a": {"ml/1": 1}, "b": {"any/1": 1}}
    assert got.unplaced == {}


def test_unplaced_instances_are_reported_with_a_reason() -> None:
    """Instances with no eligible node, or no room on one, are counted and explained."""
    nodes = {"a": Node(labels={"zone": "eu"}, capacity=1)}
    got = place(
        {"eu/1": 3, "us/1": 2}, nodes, selectors={"eu/1": {"zone": "eu"}, "us/1": {"zone": "us"}}
    )
    assert got.placements == {"a": {"eu/1": 1}}
    assert got.unplaced == {"eu/1": 2, "us/1": 2}
    assert unplaced_reason(2, nodes, {"zone": "us"}) == (
        "2 unplaced: no live node matches node_selector zone=us"
    )
    assert unplaced_reason(2, nodes, {"zone": "eu"}) == (
        "2 unplaced: its 1 eligible node(s) are at capacity"
    )
    assert unplaced_reason(1, {}) == "1 unplaced: no live node"


@pytest.mark.parametrize(
    ("record", "node"),
    [
        ({"mesh": "10.0.0.7:15443"}, Node()),
        (
            {"mesh": "m", "labels": {"zone": "eu"}, "capacity": 4},
            Node(labels={"zone": "eu"}, capacity=4),
        ),
        ({"labels": ["zone"], "capacity": "4"}, Node()),
        ({"labels": {"zone": 1}, "capacity": -1}, Node()),
        ({"capacity": True}, Node()),
    ],
)
def test_node_records_are_read_leniently(record: dict[str, object], node: Node) -> None:
    """Labels and capacity come from the registry record; malformed fields count as absent."""
    assert Node.from_record(record) == node


def test_placement_changes_use_node_records_and_selectors() -> None:
    """The controller places by the labels and capacity the node records announce."""
    from shoal.platform.control.controller import placement_changes
    from shoal.platform.runtime.agent import PLACEMENT
    from shoal.store.config import Change
    from shoal.store.watch import View

    view = View(
        config=MappingProxyType({PLACEMENT: MappingProxyType({"gone": {"revisions": {"x/1": 1}}})}),
        nodes=MappingProxyType(
            {
                "a": {"mesh": "a:1", "labels": {"zone": "eu"}, "capacity": 1},
                "b": {"mesh": "b:1", "labels": {"zone": "us"}},
            }
        ),
    )
    changes, schedule = placement_changes(view, {"x/1": 2}, {"x/1": {"zone": "eu"}})
    assert sorted(changes, key=lambda c: c.key) == [
        Change(PLACEMENT, "a", {"revisions": {"x/1": 1}}),
        Change(PLACEMENT, "b", {"revisions": {}}),
        Change(PLACEMENT, "gone", None),
    ]
    assert schedule.unplaced == {"x/1": 1}


revisions = st.sampled_from(["a/1", "b/1", "c/1"])
label_sets = st.dictionaries(st.sampled_from(["zone", "disk"]), st.sampled_from(["x", "y"]))
node_specs = st.dictionaries(
    st.sampled_from(["n1", "n2", "n3", "n4"]),
    st.builds(Node, labels=label_sets, capacity=st.none() | st.integers(0, 4)),
)


@given(
    st.dictionaries(revisions, st.integers(0, 8)),
    node_specs,
    st.dictionaries(
        st.sampled_from(["n1", "n2", "n3", "n5"]), st.dictionaries(revisions, st.integers(0, 5))
    ),
    st.dictionaries(revisions, label_sets),
)
def test_placement_respects_capacity_selectors_and_wanted(
    wanted: dict[str, int],
    nodes: dict[str, Node],
    current: dict[str, dict[str, int]],
    selectors: dict[str, dict[str, str]],
) -> None:
    """Never beyond a capacity, never on an ineligible node, never more than wanted, every
    wanted instance placed or reported, and placing again changes nothing."""
    got = place(wanted, nodes, current, selectors)
    assert set(got.placements) == set(nodes)
    for node, revs in got.placements.items():
        capacity = nodes[node].capacity
        assert capacity is None or sum(revs.values()) <= capacity
        assert all(count > 0 for count in revs.values())
        for rev in revs:
            assert eligible(nodes[node], selectors.get(rev, {}))
    for rev, count in wanted.items():
        placed = sum(revs.get(rev, 0) for revs in got.placements.values())
        assert placed + got.unplaced.get(rev, 0) == count
    assert place(wanted, nodes, got.placements, selectors) == got


@given(st.integers(0, 12), node_specs, label_sets)
def test_a_single_revision_fills_all_eligible_room(
    wanted: int, nodes: dict[str, Node], selector: dict[str, str]
) -> None:
    """Alone, a revision gets min(wanted, the eligible nodes' total capacity) instances."""
    got = place({"a/1": wanted}, nodes, selectors={"a/1": selector})
    room = sum(
        math.inf if n.capacity is None else n.capacity
        for n in nodes.values()
        if eligible(n, selector)
    )
    placed = sum(revs.get("a/1", 0) for revs in got.placements.values())
    assert placed == min(wanted, room)


# ---------------------------------------------------------------------------------------------
# shoal node --label / --capacity


def test_node_flags_become_the_node_record() -> None:
    """Labels and capacity go into the registry record; an unlimited node has no capacity."""
    labels = node_labels(["zone=eu-1", "example.com/disk=ssd", "empty="])
    assert labels == {"zone": "eu-1", "example.com/disk": "ssd", "empty": ""}
    assert node_record("10.0.0.7:15443", labels=labels, capacity=node_capacity(" 20")) == {
        "mesh": "10.0.0.7:15443",
        "labels": {"empty": "", "example.com/disk": "ssd", "zone": "eu-1"},
        "capacity": 20,
    }
    assert node_record("m", labels={}, capacity=node_capacity(None)) == {"mesh": "m"}
    assert Node.from_record(node_record("m", labels=labels, capacity=3)) == Node(
        labels=labels, capacity=3
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--label", "zone"], "--label 'zone': expected KEY=VALUE"),
        (["--label", "bad key=x"], "--label 'bad key=x': the key must be"),
        (["--label", "zone=-eu"], "--label 'zone=-eu': the value must be"),
        (["--label", f"zone={'x' * 64}"], "the value must be"),
        (["--label", "zone=a", "--label", "zone=b"], "--label 'zone=b': label 'zone' is given"),
        (["--capacity", "0"], "--capacity '0': expected"),
        (["--capacity", "lots"], "--capacity 'lots': expected"),
        (["--capacity", "-3"], "--capacity '-3': expected"),
    ],
)
def test_bad_node_flag_starts_nothing(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad --label or --capacity is exit 2 and one line naming the flag and value, before
    the node looks for a store (without one it would exit 4) or starts anything."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHOAL_HOME", str(home))
    monkeypatch.delenv("SHOAL_REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["node", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert says in lines[0]
    assert not home.exists()
