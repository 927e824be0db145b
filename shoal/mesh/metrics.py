"""Prometheus metrics of a proxy process (gateway or node router), from its own report.

The report a proxy last wrote to Redis (:attr:`shoal.mesh.proxy_state.ProxyState.last_report`:
counters, load, the activator's and the certificates' parts) is rendered in Prometheus' text
exposition format on ``GET /metrics`` of a small loopback listener (Istio's proxies use port
15090). Pure rendering (:func:`render`) and a thin aiohttp server (:class:`MetricsServer`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from shoal.mesh.load import percentile
from shoal.mesh.stats import LATENCY_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name = name

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(labels)} {value:g}")


def render(report: Mapping[str, Any], component: str) -> str:
    """``report`` (as a proxy publishes it) in the Prometheus text format."""
    return render_all({component: report})


def render_all(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Several processes' reports (by component, e.g. each gateway worker's) in the Prometheus
    text format: one family per metric, one series per component."""
    families: dict[str, _Family] = {}

    def family(name: str, kind: str, help_text: str) -> _Family:
        if name not in families:
            families[name] = _Family(name, kind, help_text)
        return families[name]

    for component, report in sorted(reports.items()):
        _add(family, report, component)
    return "\n".join(line for f in families.values() for line in f.lines) + "\n"


def _add(
    family: Callable[[str, str, str], _Family], report: Mapping[str, Any], component: str
) -> None:
    """One component's series, added to the families ``family`` returns."""
    base = {"component": component}
    family("shoal_requests_total", "counter", "Requests received.").add(
        report.get("requests", 0), **base
    )
    family("shoal_retries_total", "counter", "Attempts retried.").add(
        report.get("retries", 0), **base
    )
    refused = family("shoal_refusals_total", "counter", "Requests answered by Shoal, by cause.")
    for cause, n in sorted((report.get("refusals") or {}).items()):
        refused.add(n, cause=cause, **base)
    denied = family(
        "shoal_authz_denied_total",
        "counter",
        "Requests an AuthorizationPolicy refused, by service and DENY policy "
        '(policy="": no ALLOW policy matched).',
    )
    for key, n in sorted((report.get("denied") or {}).items()):
        service, _, policy = key.partition(" ")
        denied.add(n, service=service, policy=policy, **base)
    in_flight = family("shoal_in_flight", "gauge", "Requests in flight, by service.")
    for service, n in sorted((report.get("in_flight") or {}).items()):
        in_flight.add(n, service=service, **base)
    answered = family(
        "shoal_revision_requests_total", "counter", "Requests answered, by service/revision."
    )
    errors = family(
        "shoal_revision_errors_total",
        "counter",
        "Requests whose final answer was a 5xx or none, by service/revision.",
    )
    for revision, (total, failed) in sorted((report.get("outcomes") or {}).items()):
        answered.add(total, revision=revision, **base)
        errors.add(failed, revision=revision, **base)
    latency = family(
        "shoal_revision_latency_seconds",
        "histogram",
        "Time from a request to its answer's head, by service/revision.",
    )
    for revision, counts in sorted((report.get("latency") or {}).items()):
        running = 0
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            running += count
            le = "+Inf" if math.isinf(bound) else f"{bound:g}"
            latency.add(running, "_bucket", le=le, revision=revision, **base)
        latency.add(running, "_count", revision=revision, **base)
    held = family("shoal_held_requests", "gauge", "Requests held for activation, by service.")
    for service, n in sorted((report.get("held") or {}).items()):
        held.add(n, service=service, **base)
    family("shoal_activations_total", "counter", "Revisions activated from zero.").add(
        report.get("activations", 0), **base
    )
    cold = [c / 1000 for c in report.get("cold_starts_ms") or ()]
    summary = family(
        "shoal_cold_start_seconds", "summary", "Cold starts: first held request to routable."
    )
    if cold:
        for q in (0.5, 0.9, 0.99):
            summary.add(percentile(cold, q) or 0.0, quantile=f"{q:g}", **base)
        summary.add(sum(cold), "_sum", **base)
        summary.add(len(cold), "_count", **base)
    ejected = family("shoal_ejected_instances", "gauge", "Instances ejected by outlier detection.")
    for cluster, entries in sorted((report.get("ejections") or {}).items()):
        ejected.add(len(entries), cluster=cluster, **base)
    leaves = family("shoal_certificate_expiry_timestamp_seconds", "gauge", "Leaf expiry.")
    for leaf in (report.get("certs") or {}).get("leaves") or ():
        when = datetime.fromisoformat(leaf["not_after"]).timestamp()
        leaves.add(when, identity=leaf["identity"], **base)


Reports = Mapping[str, Mapping[str, Any]]


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` from ``reports()``: the reports to show, by
    component (a process's own; a first gateway worker's, every worker's)."""

    def __init__(self, reports: Callable[[], Awaitable[Reports]]) -> None:
        self.reports = reports
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=render_all(await self.reports()).encode(),
            headers={"content-type": CONTENT_TYPE},
        )

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
