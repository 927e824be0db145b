"""Istio's ``ServiceEntry``: backends outside Shoal (started by the test, not by Shoal) in the
mesh's registry, reached from the gateway and east-west from a Shoal service, with a
VirtualService's retries and a DestinationRule's outlier detection; TLS originated to a
backend with a CA of its own."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.support.backends import echo_backend
from tests.support.cluster import Cluster, ready, running_cluster
from tests.support.tls import self_signed
from tests.support.wait import eventually

pytestmark = pytest.mark.timeout(120)

SUPPORT = Path(__file__).resolve().parents[1] / "support"
FETCH = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: fetch}}
spec:
  app: apps:fetch
  workdir: {SUPPORT}
  revision: v1
  health: {{path: /healthz}}
"""


def static_entry(first: int, second: int) -> str:
    """api.example.com at two endpoints on loopback, with retries and outlier detection."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {first}}}
  - address: 127.0.0.1
    ports: {{http: {second}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.com
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m,
                       maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  http:
  - route: [{{destination: {{host: api.example.com}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
"""


async def apply(cluster: Cluster, text: str) -> None:
    applied = await cluster.client.apply(parse_text(text))
    assert not await cluster.client.wait_applied(applied.revision, 15)


async def call(url: str, host: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Host": host, **headers}) as answer:
            found = {k.lower(): v for k, v in answer.headers.items()}
            return answer.status, found, await answer.read()


async def test_a_static_service_entry_with_retries_and_outlier_detection(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Both endpoints serve api.example.com (Host kept) from the gateway and from a Shoal
    service; when one starts failing, every request still succeeds (retried on the other)
    and the failing one is ejected after its first failure: it sees no more requests."""
    failing = {"on": False}

    def status(_: web.BaseRequest) -> int:
        return 503 if failing["on"] else 200

    async with (
        echo_backend("first") as first,
        echo_backend("second", status=status) as second,
        running_cluster(redis, redis_url, keys, tmp_path) as cluster,
    ):
        await cluster.client.apply(parse_text(FETCH))
        await cluster.instances(lambda found: bool(ready(found, "fetch")))
        await apply(cluster, static_entry(first.port, second.port))

        answers = [await call(cluster.gateway_url + "/x", "api.example.com") for _ in range(10)]
        assert {a[0] for a in answers} == {200}
        assert {a[1]["x-backend"] for a in answers} == {"first", "second"}
        assert json.loads(answers[0][2])["headers"]["host"] == "api.example.com"
        status_code, _, body = await call(
            cluster.gateway_url + "/east-west", "fetch", **{"x-fetch-host": "api.example.com"}
        )
        assert status_code == 200 and json.loads(body)["path"] == "/east-west", body

        failing["on"] = True
        answers = [await call(cluster.gateway_url + "/y", "api.example.com") for _ in range(20)]
        assert {(a[0], a[1]["x-backend"]) for a in answers} == {(200, "first")}
        failed = [r for r in second.seen if r["path"] == "/y"]
        assert len(failed) == 1  # ejected after its first failure, never tried again


async def test_tls_is_originated_to_an_endpoint_with_a_ca_of_its_own(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A ServiceEntry for a TLS server whose certificate only its own CA vouches for: with a
    DestinationRule tls SIMPLE naming that CA (and the SNI name) the gateway's plaintext
    request reaches it over TLS; an HTTPS port without the rule (the system's CAs) is refused
    as a connect error, never sent in plaintext."""
    cert, key = self_signed(tmp_path, "secure.example")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with (
        echo_backend("tls", tls=server_tls) as backend,
        running_cluster(redis, redis_url, keys, tmp_path / "state") as cluster,
    ):
        await apply(
            cluster,
            f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.example, untrusted.example]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {backend.port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.example
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {cert}, sni: secure.example}}
""",
        )
        status, headers, body = await call(cluster.gateway_url + "/over-tls", "secure.example")
        assert (status, headers["x-backend"]) == (200, "tls"), body
        assert json.loads(body)["path"] == "/over-tls"
        status, headers, _ = await call(cluster.gateway_url + "/", "untrusted.example")
        assert (status, headers["x-shoal-cause"]) == (503, "upstream_connect_error")
        assert [r["path"] for r in backend.seen] == ["/over-tls"]


async def test_a_dns_service_entry_resolves_its_endpoints_names(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """``resolution: DNS``: an endpoint given by name (``localhost``) is resolved when the
    connection is made; the port's ``targetPort`` is where it listens."""
    async with (
        echo_backend("named") as backend,
        running_cluster(redis, redis_url, keys, tmp_path) as cluster,
    ):
        await apply(
            cluster,
            f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: named}}
spec:
  hosts: [named.example]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {backend.port}}}]
  resolution: DNS
  endpoints: [{{address: localhost}}]
""",
        )
        status, headers, _ = await call(cluster.gateway_url + "/", "named.example")
        assert (status, headers["x-backend"]) == (200, "named")


async def unreachable(cluster: Cluster) -> list[str]:
    """The ServiceEntry endpoints the gateway's health checks now find down (its report)."""
    reports = (await cluster.client.status()).reports
    return list(reports.get("gateway", {}).get("unreachable", []))


async def test_static_endpoints_are_health_checked(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """An endpoint nothing listens on leaves the rotation by the proxies' own checks, before
    any request fails on it (no retries here: a request sent there would fail); once it
    listens again it comes back."""
    dead = free_port()
    async with (
        echo_backend("up") as up,
        running_cluster(redis, redis_url, keys, tmp_path) as cluster,
    ):
        entry = (
            static_entry(up.port, dead)
            .replace("retries: {attempts: 3, retryOn: 5xx}", "retries: {attempts: 0}")
            .replace(
                "maxEjectionPercent: 100}", "maxEjectionPercent: 100}\n    failureThreshold: 1"
            )
        )
        await apply(cluster, entry)
        await eventually(
            lambda: unreachable(cluster),
            "the dead endpoint found down",
            until=lambda down: down == ["api.example.com/api-1"],
        )
        answers = [await call(cluster.gateway_url + "/", "api.example.com") for _ in range(20)]
        assert {(a[0], a[1].get("x-backend")) for a in answers} == {(200, "up")}
        async with echo_backend("back", port=dead):
            await eventually(lambda: unreachable(cluster), "it is back", until=lambda d: not d)
            answers = [await call(cluster.gateway_url + "/", "api.example.com") for _ in range(20)]
            assert {a[1].get("x-backend") for a in answers} == {"up", "back"}
