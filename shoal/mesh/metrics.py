"""Prometheus metrics of a proxy process (gateway or node router), from its own report, and the
admin listener every component serves them on, with its health endpoints.

The report a proxy last wrote to Redis (:attr:`shoal.mesh.proxy_state.ProxyState.last_report`:
counters, load, the activator's and the certificates' parts) becomes metric families of
``prometheus_client`` (:func:`families`, pure), exposed in Prometheus' text format by
``prometheus_client`` itself on ``GET /metrics`` of a small loopback listener (Istio's proxies
use port 15090). A series exists while its report names it: a service, revision or certificate
that is gone disappears from the next scrape. The same listener answers ``GET /healthz`` (the
process is serving) and ``GET /readyz`` (it has applied the store's config: 503 until then).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shoal.mesh.stats import LATENCY_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST

COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
"""Upper bounds (seconds) of the cold-start histogram."""

Reports = Mapping[str, Mapping[str, Any]]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _buckets(bounds: Iterable[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts."""
    running, out = 0, []
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((_le(bound), float(running)))
    return out


def families(reports: Reports) -> list[Metric]:
    """Several processes' reports (by component: a process's own, or every gateway worker's)
    as metric families, one series per component."""
    c = "component"
    requests = CounterMetricFamily("shoal_requests", "Requests received.", labels=[c])
    responses = CounterMetricFamily(
        "shoal_responses",
        "Final answers, by service, revision, route, status class and x-shoal-cause (empty: "
        "the request got no further, or the answer is the instance's).",
        labels=[c, "service", "revision", "route", "status_class", "cause"],
    )
    retries = CounterMetricFamily("shoal_retries", "Attempts retried.", labels=[c])
    retried = CounterMetricFamily(
        "shoal_service_retries", "Attempts retried, by service.", labels=[c, "service"]
    )
    refusals = CounterMetricFamily(
        "shoal_refusals", "Requests answered by Shoal, by cause.", labels=[c, "cause"]
    )
    denied = CounterMetricFamily(
        "shoal_authz_denied",
        "Requests an AuthorizationPolicy refused, by service and DENY policy "
        '(policy="": no ALLOW policy matched).',
        labels=[c, "service", "policy"],
    )
    inbound = CounterMetricFamily(
        "shoal_inbound_requests",
        "Requests a node router took in for one of its instances.",
        labels=[c, "instance"],
    )
    in_flight = GaugeMetricFamily("shoal_in_flight", "Requests in flight.", labels=[c, "service"])
    answered = CounterMetricFamily(
        "shoal_revision_requests", "Requests answered, by service/revision.", labels=[c, "revision"]
    )
    errors = CounterMetricFamily(
        "shoal_revision_errors",
        "Requests whose final answer was a 5xx or none, by service/revision.",
        labels=[c, "revision"],
    )
    latency = HistogramMetricFamily(
        "shoal_revision_latency_seconds",
        "Time from a request to its answer's head, by service/revision.",
        labels=[c, "revision"],
    )
    held = GaugeMetricFamily(
        "shoal_held_requests", "Requests held for activation.", labels=[c, "service"]
    )
    activations = CounterMetricFamily(
        "shoal_activations", "Revisions activated from zero.", labels=[c]
    )
    cold = HistogramMetricFamily(
        "shoal_cold_start_seconds",
        "Cold starts: first held request to routable (the last ones kept).",
        labels=[c],
    )
    ejected = GaugeMetricFamily(
        "shoal_ejected_instances",
        "Instances ejected by outlier detection.",
        labels=[c, "cluster"],
    )
    detections = CounterMetricFamily(
        "shoal_outlier_detections",
        "Instances outlier detection found failing, ejected or not (the ejection cap), by "
        "cluster (service or service/subset).",
        labels=[c, "cluster"],
    )
    ejections = CounterMetricFamily(
        "shoal_outlier_ejections",
        "Ejections outlier detection carried out, by cluster.",
        labels=[c, "cluster"],
    )
    expiry = GaugeMetricFamily(
        "shoal_certificate_expiry_timestamp_seconds",
        "When the certificate of an identity this process holds expires (Unix time).",
        labels=[c, "identity"],
    )
    for component, report in sorted(reports.items()):
        requests.add_metric([component], report.get("requests", 0))
        retries.add_metric([component], report.get("retries", 0))
        activations.add_metric([component], report.get("activations", 0))
        for row in report.get("responses") or ():
            *labels, n = row
            responses.add_metric([component, *labels], n)
        for service, n in sorted((report.get("retried") or {}).items()):
            retried.add_metric([component, service], n)
        for cause, n in sorted((report.get("refusals") or {}).items()):
            refusals.add_metric([component, cause], n)
        for key, n in sorted((report.get("denied") or {}).items()):
            service, _, policy = key.partition(" ")
            denied.add_metric([component, service, policy], n)
        for instance, n in sorted((report.get("inbound") or {}).items()):
            inbound.add_metric([component, instance], n)
        for service, n in sorted((report.get("in_flight") or {}).items()):
            in_flight.add_metric([component, service], n)
        for revision, (total, failed) in sorted((report.get("outcomes") or {}).items()):
            answered.add_metric([component, revision], total)
            errors.add_metric([component, revision], failed)
        sums = report.get("latency_sum") or {}
        for revision, counts in sorted((report.get("latency") or {}).items()):
            buckets = _buckets(LATENCY_BUCKETS, counts)
            latency.add_metric([component, revision], buckets, sums.get(revision, 0.0))
        for service, n in sorted((report.get("held") or {}).items()):
            held.add_metric([component, service], n)
        starts = [ms / 1000 for ms in report.get("cold_starts_ms") or ()]
        if starts:
            counts = [0] * len(COLD_START_BUCKETS)
            for seconds in starts:
                counts[next(i for i, b in enumerate(COLD_START_BUCKETS) if seconds <= b)] += 1
            cold.add_metric([component], _buckets(COLD_START_BUCKETS, counts), sum(starts))
        for cluster, entries in sorted((report.get("ejections") or {}).items()):
            ejected.add_metric([component, cluster], len(entries))
        for cluster, (detected, enforced) in sorted((report.get("outliers") or {}).items()):
            detections.add_metric([component, cluster], detected)
            ejections.add_metric([component, cluster], enforced)
        for leaf in (report.get("certs") or {}).get("leaves") or ():
            when = datetime.fromisoformat(leaf["not_after"]).timestamp()
            expiry.add_metric([component, leaf["identity"]], when)
    return [
        requests,
        responses,
        retries,
        retried,
        refusals,
        denied,
        inbound,
        in_flight,
        answered,
        errors,
        latency,
        held,
        activations,
        cold,
        ejected,
        detections,
        ejections,
        expiry,
    ]


class _Fixed(Collector):
    """A collector of families built beforehand (one scrape's)."""

    def __init__(self, built: list[Metric]) -> None:
        self._built = built

    def collect(self) -> Iterator[Metric]:
        yield from self._built


def exposition(built: list[Metric]) -> str:
    """Metric families in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(built))
    return generate_latest(registry).decode()


def render_all(reports: Reports) -> str:
    """``reports`` (by component) in Prometheus' text exposition format."""
    return exposition(families(reports))


def render(report: Mapping[str, Any], component: str) -> str:
    """One process's ``report`` in Prometheus' text exposition format."""
    return render_all({component: report})


class MetricsServer:
    """An admin listener on ``host:port``: ``GET /metrics`` answers ``metrics()`` (Prometheus
    text), ``GET /healthz`` says the process serves, ``GET /readyz`` whether ``ready()`` (None:
    ready, else why not)."""

    def __init__(
        self,
        metrics: Callable[[], Awaitable[str]],
        ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=(await self.metrics()).encode(), headers={"content-type": CONTENT_TYPE}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        why = self.ready()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
