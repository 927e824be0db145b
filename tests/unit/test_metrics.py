"""Prometheus rendering of a proxy's report."""

from __future__ import annotations

from shoal.mesh.metrics import render, render_all

REPORT = {
    "requests": 12,
    "retries": 2,
    "refusals": {"no_route": 3},
    "denied": {"world deny-all": 2, "world ": 1},
    "in_flight": {"hello": 1},
    "outcomes": {"hello/v1": [10, 1]},
    "latency": {"hello/v1": [8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]},
    "held": {"lazy": 4},
    "activations": 2,
    "cold_starts_ms": [100.0, 300.0],
    "ejections": {"hello/v1": [{"instance": "hello/a"}]},
    "certs": {
        "leaves": [{"identity": "spiffe://td/gateway", "not_after": "2026-11-27T00:00:00+00:00"}]
    },
}


def test_report_renders_as_prometheus_text() -> None:
    """Every family has HELP/TYPE; labels are sorted and quoted; the cold starts summary has
    quantiles, sum and count."""
    text = render(REPORT, "gateway")
    lines = set(text.splitlines())
    assert "# TYPE shoal_requests_total counter" in lines
    assert 'shoal_requests_total{component="gateway"} 12' in lines
    assert 'shoal_refusals_total{cause="no_route",component="gateway"} 3' in lines
    denied = 'shoal_authz_denied_total{component="gateway",policy="%s",service="world"}'
    assert f"{denied % 'deny-all'} 2" in lines and f"{denied % ''} 1" in lines
    assert 'shoal_revision_errors_total{component="gateway",revision="hello/v1"} 1' in lines
    assert 'shoal_held_requests{component="gateway",service="lazy"} 4' in lines
    bucket = (
        'shoal_revision_latency_seconds_bucket{component="gateway",le="%s",revision="hello/v1"}'
    )
    assert f"{bucket % '0.01'} 9" in lines
    assert f"{bucket % '+Inf'} 10" in lines
    assert 'shoal_cold_start_seconds{component="gateway",quantile="0.5"} 0.1' in lines
    assert 'shoal_cold_start_seconds_count{component="gateway"} 2' in lines
    assert 'shoal_ejected_instances{cluster="hello/v1",component="gateway"} 1' in lines
    assert any(line.startswith("shoal_certificate_expiry_timestamp_seconds{") for line in lines)
    assert text.endswith("\n")


def test_empty_report_and_escaping() -> None:
    """A proxy that has not reported yet still renders; label values are escaped."""
    text = render({}, 'odd"name')
    assert 'shoal_requests_total{component="odd\\"name"} 0' in text.splitlines()


def test_several_workers_render_as_one_family_each() -> None:
    """The first gateway worker shows every worker: one HELP/TYPE per family, one series per
    worker (Prometheus refuses a family declared twice)."""
    text = render_all({"gateway/1": {"requests": 5}, "gateway/0": REPORT})
    lines = text.splitlines()
    assert lines.count("# TYPE shoal_requests_total counter") == 1
    assert 'shoal_requests_total{component="gateway/0"} 12' in lines
    assert 'shoal_requests_total{component="gateway/1"} 5' in lines
    help_lines = [line for line in lines if line.startswith("# HELP")]
    assert len(help_lines) == len(set(help_lines))
