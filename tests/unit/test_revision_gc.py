"""Knative's revision garbage collection (shoal.platform.control.controller.collectable)."""

from __future__ import annotations

from shoal.platform.control.controller import collectable
from shoal.platform.control.scaling import AutoscaleSettings
from shoal.resources.model import Service


def revision(name: str, created: int, service: str = "hello") -> Service:
    return Service(name=service, revision=name, app="app:a", created=created)


SERVICES = [revision(f"r{i}", i) for i in range(1, 6)] + [revision("x1", 1, "other")]


def test_retired_revisions_beyond_the_newest_kept_are_deleted_after_the_retention() -> None:
    """Of the retired revisions (none running), the newest ``keep_retired`` stay; older ones
    go once retired for ``delete_retired_after``; a service a VirtualService routes (not
    managed) keeps all of its."""
    settings = AutoscaleSettings(keep_retired=1, delete_retired_after=100.0)
    retired = {"hello/r1": 0.0, "hello/r2": 50.0, "hello/r3": 0.0, "other/x1": 0.0}
    found = collectable(SERVICES, {"hello"}, retired, {}, 120.0, settings)
    # r3 is the newest retired one (kept); r2 has been retired for 70 s only.
    assert found == ["hello/r1"]
    assert collectable(SERVICES, {"hello"}, retired, {}, 200.0, settings) == [
        "hello/r2",
        "hello/r1",
    ]
    assert collectable(SERVICES, {"hello"}, retired, {"hello/r1": 1}, 200.0, settings) == [
        "hello/r2"
    ]
    everything = AutoscaleSettings(keep_retired=0, delete_retired_after=0.0)
    assert collectable(SERVICES, {"hello", "other"}, retired, {}, 60.0, everything) == [
        "hello/r3",
        "hello/r2",
        "hello/r1",
        "other/x1",
    ]
