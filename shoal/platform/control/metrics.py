"""The controller's Prometheus metrics: whether it leads, and the autoscaler's decisions (pure:
:func:`families` of a :class:`ControllerReport`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(slots=True)
class ControllerReport:
    """What the controller's ``/metrics`` shows; updated every tick."""

    ticks: int = 0
    leading: bool = False
    # by service/revision: the last decision (desired, ready, panicking)
    decisions: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    # by (service/revision, "up" | "down"): decisions that changed the desired count
    scaled: dict[tuple[str, str], int] = field(default_factory=dict)

    def decided(self, latest: Mapping[str, tuple[int, int, bool]]) -> None:
        """The tick's decisions: count each change of a revision's desired count."""
        for revision, (desired, _, _) in latest.items():
            before = self.decisions.get(revision)
            if before is not None and before[0] != desired:
                key = (revision, "up" if desired > before[0] else "down")
                self.scaled[key] = self.scaled.get(key, 0) + 1
        self.decisions = dict(latest)


def families(report: ControllerReport) -> list[Metric]:
    """The controller's metric families."""
    ticks = CounterMetricFamily("shoal_controller_ticks", "Controller rounds run.")
    ticks.add_metric([], report.ticks)
    leading = GaugeMetricFamily(
        "shoal_controller_leading", "1 while this controller leads (places, scales, signs)."
    )
    leading.add_metric([], 1 if report.leading else 0)
    desired = GaugeMetricFamily(
        "shoal_autoscaler_desired_instances", "Instances the autoscaler wants.", labels=["revision"]
    )
    ready = GaugeMetricFamily(
        "shoal_autoscaler_ready_instances", "Ready instances seen.", labels=["revision"]
    )
    panicking = GaugeMetricFamily(
        "shoal_autoscaler_panicking", "1 while the revision is in panic mode.", labels=["revision"]
    )
    for revision, (want, have, panic) in sorted(report.decisions.items()):
        desired.add_metric([revision], want)
        ready.add_metric([revision], have)
        panicking.add_metric([revision], 1 if panic else 0)
    scaled = CounterMetricFamily(
        "shoal_scaling_decisions",
        "Decisions that changed a revision's desired instances, by direction.",
        labels=["revision", "direction"],
    )
    for (revision, direction), n in sorted(report.scaled.items()):
        scaled.add_metric([revision, direction], n)
    return [ticks, leading, desired, ready, panicking, scaled]
