"""The controller's autoscaling state (Autoscaling): reports folded once, activation,
retirement of unrouted revisions, with literal times."""

from __future__ import annotations

from shoal.platform.control.scaling import AutoscaleSettings, Autoscaling
from shoal.resources.model import Scale, Service

HELLO = Service(name="hello", revision="v1", app="app:hello", scale=Scale(min=0, max=100))
KEPT = Service(name="hello", revision="v2", app="app:hello", scale=Scale(min=2, max=10))
SETTINGS = AutoscaleSettings(stable_window=10.0, panic_window=2.0, retire_after=30.0)


def test_a_report_is_folded_in_once() -> None:
    """The same report (same seq) read on several ticks counts once."""
    scaling = Autoscaling(SETTINGS)
    report = {"gateway": {"seq": 7, "load": {"hello/v1": [70.0, 100]}}}
    for now in (100.0, 100.2, 100.4):
        scaling.observe(report, now)
    decision = scaling.decide([HELLO], {"hello/v1": 10}, 100.5)["hello/v1"]
    assert decision.desired == 10  # 70 in flight / 7 per instance (thrice would be 30)


def test_activation_asks_for_an_instance_at_once() -> None:
    """A min-0 revision at zero gets one instance when a proxy asks for it."""
    scaling = Autoscaling(SETTINGS)
    assert scaling.decide([HELLO], {}, 50.0)["hello/v1"].desired == 0
    scaling.activate("hello/v1", 51.0)
    assert scaling.decide([HELLO], {}, 51.0)["hello/v1"].desired == 1


def test_unrouted_revision_is_retired_after_the_grace_whatever_its_min() -> None:
    """0% of traffic and no request for retire_after: desired 0 even with min 2; a request
    (activation) or a route back keeps it."""
    scaling = Autoscaling(SETTINGS)
    assert scaling.decide([KEPT], {"hello/v2": 2}, 0.0, ["hello/v2"])["hello/v2"].desired == 2
    assert scaling.decide([KEPT], {"hello/v2": 2}, 29.0, ["hello/v2"])["hello/v2"].desired == 2
    retired = scaling.decide([KEPT], {"hello/v2": 2}, 30.0, ["hello/v2"])["hello/v2"]
    assert retired.desired == 0 and "retired" in retired.reason
    scaling.activate("hello/v2", 31.0)
    assert scaling.decide([KEPT], {}, 31.0, ["hello/v2"])["hello/v2"].desired == 2
    assert scaling.decide([KEPT], {}, 70.0, [])["hello/v2"].desired == 2  # routed again
