"""The admin ports of a running gateway and node: ``/metrics`` read with prometheus_client's
parser counts exactly the requests a test sent — at the gateway by service, status class and
cause, at the router its inbound requests per instance, its east-west calls and the 403s an
AuthorizationPolicy caused — the certificate expiry is the certificate's own, and ``/healthz``
and ``/readyz`` answer."""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shoal.resources.manifest import load_files, parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, ready, running_cluster
from tests.support.wait import eventually

NO_SECRET = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret}
spec:
  selector: {matchLabels: {app: hello}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/secret"]}}]
"""


async def scrape(session: aiohttp.ClientSession, port: int) -> list[Sample]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def by(samples: Iterable[Sample], name: str, label: str, keep: Callable[[str], bool]) -> float:
    return sum(s.value for s in samples if s.name == name and keep(s.labels[label]))


async def test_counters_match_the_requests_sent(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply([*load_files([str(EXAMPLE)]), *parse_text(NO_SECRET)])
        await cluster.instances(
            lambda f: len(ready(f, "world")) == 1 and len(ready(f, "hello")) == 4
        )
        sent: collections.Counter[tuple[str, int]] = collections.Counter()
        async with aiohttp.ClientSession() as session:
            for port in (cluster.gateway_admin, cluster.node_admin):
                for path in ("/healthz", "/readyz"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status == 200, (port, path, await r.text())
            for host, path, n in (
                ("hello", "/", 20),
                ("hello", "/chain", 10),  # hello calls world east-west
                ("hello", "/secret", 5),  # denied by the router
                ("nowhere", "/", 3),  # no route at the gateway
            ):
                for _ in range(n):
                    url = cluster.gateway_url + path
                    async with session.get(url, headers={"Host": host}) as r:
                        await r.read()
                        sent[host, r.status] += 1
            assert sent == {("hello", 200): 30, ("hello", 403): 5, ("nowhere", 404): 3}

            gateway = await eventually(
                lambda: scrape(session, cluster.gateway_admin),
                "the gateway's report to count every request",
                until=lambda found: total(found, "shoal_requests_total") == 38,
            )
            hello = {"service": "hello", "route": "hello/0"}  # the example's VirtualService
            assert total(gateway, "shoal_responses_total", **hello, status_class="2xx") == 30
            denied = {"status_class": "4xx", "cause": "denied"}
            assert total(gateway, "shoal_responses_total", **hello, **denied) == 5
            no_route = {"service": "", "status_class": "4xx", "cause": "no_route"}
            assert total(gateway, "shoal_responses_total", **no_route) == 3

            node = await eventually(
                lambda: scrape(session, cluster.node_admin),
                "the node's report to count every request",
                until=lambda found: total(found, "shoal_refusals_total", cause="denied") == 5,
            )
            inbound = "shoal_inbound_requests_total"
            assert by(node, inbound, "instance", lambda key: key.startswith("hello/")) == 35
            assert by(node, inbound, "instance", lambda key: key.startswith("world/")) == 10
            no_secret = {"service": "hello", "policy": "no-secret"}
            assert total(node, "shoal_authz_denied_total", **no_secret) == 5
            east_west = {"service": "world", "status_class": "2xx"}
            assert total(node, "shoal_responses_total", **east_west) == 10

        # The router's certificate, as its listener presents it, expires when the metric says.
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", cluster.mesh_port, ssl=client)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        writer.close()
        cert = x509.load_der_x509_certificate(der)
        expiry = [s for s in node if s.name == "shoal_certificate_expiry_timestamp_seconds"]
        assert cert.not_valid_after_utc.timestamp() in {s.value for s in expiry}
