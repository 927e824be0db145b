"""The Grafana dashboard in deploy/grafana is importable (a dashboard with a Prometheus input)
and every series it queries is one Shoal exposes: renaming a metric breaks this test, not the
dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shoal.mesh.metrics import families
from shoal.platform.control.metrics import ControllerReport
from shoal.platform.control.metrics import families as controller_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "shoal-dashboard.json"


def _exposed() -> set[str]:
    """Every sample name /metrics can show (a histogram's _bucket/_sum/_count, a counter's
    _total)."""
    names = set()
    for family in [*families({}), *controller_families(ControllerReport())]:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_dashboard_is_importable_and_queries_only_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bshoal_[a-z_]+", target["expr"])
    }
    assert queried and queried <= _exposed(), queried - _exposed()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
