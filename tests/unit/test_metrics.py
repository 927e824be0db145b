"""A proxy's report as Prometheus metrics, read back with prometheus_client's own parser."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from shoal.mesh.metrics import exposition, render, render_all
from shoal.mesh.stats import Stats
from shoal.platform.control.metrics import ControllerReport
from shoal.platform.control.metrics import families as controller_families

NOT_AFTER = "2026-11-27T13:37:41+00:00"

REPORT = {
    "requests": 1_234_567,
    "retries": 2,
    "retried": {"hello": 2},
    "refusals": {"no_route": 3, "denied": 3},
    "denied": {"world deny-all": 2, "world ": 1},
    "inbound": {"hello/v1/a": 7},
    "in_flight": {"hello": 1},
    "outcomes": {"hello/v1": [10, 1]},
    "latency": {"hello/v1": [8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]},
    "latency_sum": {"hello/v1": 12.5},
    "responses": [
        ["hello", "v1", "hello/0", "2xx", "", 9],
        ["hello", "v1", "hello/0", "5xx", "upstream_reset", 1],
        ["", "", "", "4xx", "no_route", 3],
    ],
    "held": {"lazy": 4},
    "activations": 2,
    "cold_starts_ms": [100.0, 300.0],
    "ejections": {"hello/v1": [{"instance": "hello/a"}]},
    "outliers": {"hello/v1": [3, 2]},
    "certs": {"leaves": [{"identity": "spiffe://td/gateway", "not_after": NOT_AFTER}]},
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``text`` by name and label set (parsed as Prometheus would)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


def test_report_parses_as_prometheus_text() -> None:
    """Every family parses; counters keep every digit; responses by status class and cause; the
    router's inbound requests and the denials are there; histograms are cumulative."""
    found = samples(render(REPORT, "gateway"))
    g = {"component": "gateway"}
    assert value(found, "shoal_requests_total", **g) == 1_234_567
    ok = {"service": "hello", "revision": "v1", "route": "hello/0", "status_class": "2xx"}
    assert value(found, "shoal_responses_total", **g, **ok, cause="") == 9
    no_route = {"service": "", "revision": "", "route": "", "status_class": "4xx"}
    assert value(found, "shoal_responses_total", **g, **no_route, cause="no_route") == 3
    assert value(found, "shoal_inbound_requests_total", **g, instance="hello/v1/a") == 7
    assert value(found, "shoal_refusals_total", **g, cause="denied") == 3
    assert value(found, "shoal_authz_denied_total", **g, service="world", policy="deny-all") == 2
    assert value(found, "shoal_authz_denied_total", **g, service="world", policy="") == 1
    assert value(found, "shoal_revision_errors_total", **g, revision="hello/v1") == 1
    assert value(found, "shoal_held_requests", **g, service="lazy") == 4
    bucket = "shoal_revision_latency_seconds_bucket"
    assert value(found, bucket, **g, revision="hello/v1", le="0.01") == 9
    assert value(found, bucket, **g, revision="hello/v1", le="+Inf") == 10
    assert value(found, "shoal_revision_latency_seconds_count", **g, revision="hello/v1") == 10
    assert value(found, "shoal_revision_latency_seconds_sum", **g, revision="hello/v1") == 12.5
    assert value(found, "shoal_cold_start_seconds_bucket", **g, le="0.25") == 1
    assert value(found, "shoal_cold_start_seconds_count", **g) == 2
    assert value(found, "shoal_cold_start_seconds_sum", **g) == 0.4
    assert value(found, "shoal_ejected_instances", **g, cluster="hello/v1") == 1
    assert value(found, "shoal_service_retries_total", **g, service="hello") == 2
    assert value(found, "shoal_outlier_detections_total", **g, cluster="hello/v1") == 3
    assert value(found, "shoal_outlier_ejections_total", **g, cluster="hello/v1") == 2


def test_certificate_expiry_is_exact_to_the_second() -> None:
    found = samples(render(REPORT, "gateway"))
    expiry = value(
        found,
        "shoal_certificate_expiry_timestamp_seconds",
        component="gateway",
        identity="spiffe://td/gateway",
    )
    assert expiry == datetime(2026, 11, 27, 13, 37, 41, tzinfo=UTC).timestamp()


def test_empty_report_and_escaping() -> None:
    """A proxy that has not reported yet still renders; label values are escaped."""
    found = samples(render({}, 'odd"name'))
    assert value(found, "shoal_requests_total", component='odd"name') == 0


def test_several_workers_render_as_one_family_each() -> None:
    """The first gateway worker shows every worker: one family each, one series per worker
    (Prometheus refuses a family declared twice)."""
    text = render_all({"gateway/1": {"requests": 5}, "gateway/0": REPORT})
    assert text.count("# TYPE shoal_requests_total counter") == 1
    found = samples(text)
    assert value(found, "shoal_requests_total", component="gateway/0") == 1_234_567
    assert value(found, "shoal_requests_total", component="gateway/1") == 5


def test_a_gone_service_leaves_no_series() -> None:
    """A series exists while the report names it: nothing of a service the report no longer
    names (a deleted service's in-flight gauge, its certificate) is rendered."""
    text = render({**REPORT, "in_flight": {}, "certs": {"leaves": []}}, "gateway")
    assert "shoal_in_flight{" not in text
    assert "shoal_certificate_expiry_timestamp_seconds{" not in text


def test_stats_count_answers_by_status_class() -> None:
    stats = Stats()
    for status in (200, 204, 503):
        stats.responded("hello", "v1", "hello/0", status, "" if status < 500 else "x")
    assert stats.responses == {
        ("hello", "v1", "hello/0", "2xx", ""): 2,
        ("hello", "v1", "hello/0", "5xx", "x"): 1,
    }


def test_the_controller_counts_scaling_decisions_by_direction() -> None:
    """A decision counts when it changes a revision's desired instances; the gauges show the
    last one; everything parses as Prometheus text."""
    report = ControllerReport(leading=True, ticks=3)
    report.decided({"hello/v1": (1, 1, False)})
    report.decided({"hello/v1": (3, 1, True)})
    report.decided({"hello/v1": (3, 3, True)})
    report.decided({"hello/v1": (2, 3, False)})
    found = samples(exposition(controller_families(report)))
    assert value(found, "shoal_controller_leading") == 1
    assert value(found, "shoal_controller_ticks_total") == 3
    scaled = "shoal_scaling_decisions_total"
    assert value(found, scaled, revision="hello/v1", direction="up") == 1
    assert value(found, scaled, revision="hello/v1", direction="down") == 1
    assert value(found, "shoal_autoscaler_desired_instances", revision="hello/v1") == 2
    assert value(found, "shoal_autoscaler_ready_instances", revision="hello/v1") == 3
    assert value(found, "shoal_autoscaler_panicking", revision="hello/v1") == 0
