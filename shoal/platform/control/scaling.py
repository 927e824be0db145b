"""The controller's autoscaling loop state: proxies' load reports in, instances wanted out.

Pure (time is an argument): :class:`Autoscaling` keeps one :class:`~.autoscaler.Metrics` window
and one :class:`~.autoscaler.AutoscalerState` per Service revision, folds in each proxy's
per-second load report once (by its sequence number) and an activation request as a request
seen now, and asks :func:`~.autoscaler.decide` for every revision on each tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.platform.control.autoscaler import AutoscalerState, Decision, Metrics, Sample, decide
from shoal.resources.model import Service


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscaleSettings:
    """Knative's config-autoscaler knobs that Shoal exposes."""

    stable_window: float = 60.0
    panic_window: float = 6.0
    # Knative waits 30 s so that its activator is in the path before the last pod goes; Shoal's
    # proxies hold requests for an empty destination themselves, so nothing needs the wait.
    scale_to_zero_grace: float = 0.0
    # A revision that no route sends traffic to (0% under its VirtualService's split) and that
    # saw no request for this long is scaled to zero whatever its scale.min (Knative scales
    # unrouted revisions away too); traffic sent back to it activates it again.
    retire_after: float = 300.0
    # Knative's revision garbage collection: a retired revision (see above; at zero instances)
    # of a service no VirtualService routes is deleted once retired this long, but the newest
    # ``keep_retired`` of them are kept (to route traffic back to by name).
    delete_retired_after: float = 48 * 3600.0
    keep_retired: int = 20

    def __post_init__(self) -> None:
        if not 1.0 <= self.panic_window <= self.stable_window:
            raise ValueError(
                f"need 1 <= panic window ({self.panic_window:g}s) <= stable window "
                f"({self.stable_window:g}s)"
            )
        if self.keep_retired < 0 or self.delete_retired_after < 0:
            raise ValueError(
                f"keep-retired and delete-retired-after must be >= 0 (got {self.keep_retired}, "
                f"{self.delete_retired_after:g})"
            )
        if self.scale_to_zero_grace < 0:
            raise ValueError(f"scale-to-zero grace must be >= 0 (got {self.scale_to_zero_grace})")


class Autoscaling:
    """Per-revision metrics and autoscaler state, fed by reports, asked on every tick."""

    def __init__(self, settings: AutoscaleSettings | None = None) -> None:
        self.settings = settings or AutoscaleSettings()
        self._metrics: dict[str, Metrics] = {}
        self._states: dict[str, AutoscalerState] = {}
        self._seen: dict[str, int] = {}  # component -> last report sequence folded in
        self._unrouted_since: dict[str, float] = {}
        self.retired_since: dict[str, float] = {}  # revision -> when it was first scaled away

    def _window(self, revision: str) -> Metrics:
        metrics = self._metrics.get(revision)
        if metrics is None:
            metrics = self._metrics[revision] = Metrics(window=self.settings.stable_window)
        return metrics

    def observe(self, reports: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Fold in every report not seen yet: its ``load`` is one second of samples."""
        for component, report in reports.items():
            seq = int(report.get("seq", 0))
            if self._seen.get(component) == seq:
                continue
            self._seen[component] = seq
            for revision, (concurrency, arrivals) in (report.get("load") or {}).items():
                self._window(revision).add(Sample(now, float(concurrency), int(arrivals)))
        for gone in set(self._seen) - set(reports):
            del self._seen[gone]

    def activate(self, revision: str, now: float) -> None:
        """A proxy holds a request for ``revision``: count it as one arriving now."""
        self._window(revision).add(Sample(now, 1.0, 1))

    def decide(
        self,
        services: Iterable[Service],
        ready: Mapping[str, int],
        now: float,
        unrouted: Iterable[str] = (),
    ) -> dict[str, Decision]:
        """The decision for every revision in ``services`` (``ready``: ready instances per
        ``service/revision``; ``unrouted``: revisions no route sends traffic to now);
        revisions no longer there are forgotten."""
        s = self.settings
        out: dict[str, Decision] = {}
        unrouted = set(unrouted)
        for key in set(self._unrouted_since) - unrouted:
            del self._unrouted_since[key]
            self.retired_since.pop(key, None)
        for service in services:
            key = service.key
            if key in unrouted:
                since = self._unrouted_since.setdefault(key, now)
                last = self._window(key).last_active_at
                quiet = now - max(since, last if last is not None else since)
                if quiet >= s.retire_after:
                    self.retired_since.setdefault(key, now)
                    out[key] = Decision(
                        desired=0,
                        state=self._states.get(key, AutoscalerState()),
                        panicking=False,
                        reason=f"retired: no route sends it traffic (for {quiet:.0f}s)",
                    )
                    continue
            decision = decide(
                service.scale,
                self._window(key),
                self._states.get(key, AutoscalerState()),
                ready.get(key, 0),
                now,
                stable_window=s.stable_window,
                panic_window=s.panic_window,
                scale_to_zero_grace=s.scale_to_zero_grace,
            )
            self._states[key] = decision.state
            out[key] = decision
        for gone in set(self._metrics) - set(out):
            self._metrics.pop(gone, None)
            self._states.pop(gone, None)
        for gone in set(self.retired_since) - set(out):
            del self.retired_since[gone]
        return out
