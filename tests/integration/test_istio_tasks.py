"""Istio's documentation tasks, on Shoal: the manifests of each task (tests/istio/, as the
tasks write them) applied unchanged to Bookinfo and httpbin (deploy/examples/, run as Shoal
services), and what each task says should happen, checked through the gateway.

The tasks: request routing, traffic shifting, fault injection, request timeouts, circuit
breaking, mirroring, authorization for HTTP traffic; and the header example of the
VirtualService reference (its hosts in namespace ``default``) and a ``sourceLabels`` rule.
The cluster runs with Istio's trust domain, ``cluster.local``, which the tasks' principals
name.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.resources.manifest import load_files, parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import Cluster, ready, running_cluster
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "istio"
BOOKINFO = ROOT / "deploy" / "examples" / "bookinfo"
HTTPBIN = ROOT / "deploy" / "examples" / "httpbin"
BOOKINFO_SERVICES = {"productpage": 1, "details": 1, "reviews": 3, "ratings": 1}

pytestmark = pytest.mark.timeout(180)


@asynccontextmanager
async def mesh(
    redis: Redis, redis_url: str, keys: Keys, state_dir: Path, app: Path, running: dict[str, int]
) -> AsyncIterator[Cluster]:
    """A cluster in trust domain cluster.local running the example ``app``, once ``running``
    (service -> instances) are ready."""
    async with running_cluster(
        redis, redis_url, keys, state_dir, trust_domain="cluster.local"
    ) as cluster:
        await cluster.client.apply(load_files([str(app)]))
        await cluster.instances(
            lambda found: all(len(ready(found, s)) == n for s, n in running.items()), timeout=60
        )
        yield cluster


async def apply(cluster: Cluster, *names: str) -> None:
    """Apply the task manifests ``names`` (files in tests/istio) as they are, one after the
    other (``kubectl apply -f`` each), and wait until every proxy has them."""
    for name in names:
        applied = await cluster.client.apply(load_files([str(TASKS / name)]))
        assert not await cluster.client.wait_applied(applied.revision, 15)


async def delete(cluster: Cluster, kind: str, name: str) -> None:
    """Delete a resource (``kubectl delete``) and wait until every proxy has seen it."""
    revision, _ = await cluster.client.delete(kind, name)
    assert not await cluster.client.wait_applied(revision, 15)


async def page(cluster: Cluster, user: str | None = None) -> dict[str, Any]:
    """Bookinfo's product page through the gateway, as ``user`` (Bookinfo's login)."""
    headers = {"Host": "productpage", **({"end-user": user} if user else {})}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.gateway_url}/productpage", headers=headers) as answer:
            assert answer.status == 200, (answer.status, await answer.text())
            found: dict[str, Any] = await answer.json()
            return found


def stars(shown: dict[str, Any]) -> str | None:
    """The stars a page shows: None (reviews v1), black (v2), red (v3), or "error"."""
    reviews = shown["reviews"]
    if "error" in reviews:
        return "error"
    ratings = reviews.get("ratings")
    if ratings is None:
        return None
    return "error" if "error" in ratings else str(ratings["color"])


async def test_request_routing_and_traffic_shifting(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Request routing: with every service on v1, no page shows stars; with reviews-test-v2,
    jason sees black stars (v2) and everyone else none. Traffic shifting: 50/50 between v1 and
    v3 shows both, about equally; then all on v3: red stars only."""
    async with mesh(redis, redis_url, keys, tmp_path, BOOKINFO, BOOKINFO_SERVICES) as cluster:
        await apply(cluster, "destination-rule-all.yaml", "virtual-service-all-v1.yaml")
        assert {stars(await page(cluster)) for _ in range(10)} == {None}

        await apply(cluster, "virtual-service-reviews-test-v2.yaml")
        assert {stars(await page(cluster, "jason")) for _ in range(5)} == {"black"}
        assert {stars(await page(cluster, "ana")) for _ in range(5)} == {None}
        assert {stars(await page(cluster)) for _ in range(5)} == {None}

        await apply(cluster, "virtual-service-reviews-50-v3.yaml")
        seen = Counter([stars(await page(cluster)) for _ in range(100)])
        assert set(seen) == {None, "red"} and 25 <= seen["red"] <= 75, seen

        await apply(cluster, "virtual-service-reviews-v3.yaml")
        assert {stars(await page(cluster)) for _ in range(10)} == {"red"}


async def test_fault_injection(redis: Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Fault injection, delay: ratings answer jason 7 s late; reviews v2 would wait 10 s, but
    the product page gives up on reviews after 3 s and one more try, so jason's page shows
    reviews unavailable (the bug the task finds), while other users' pages are whole. Abort:
    ratings answer jason 500, and his page shows ratings unavailable."""
    async with mesh(redis, redis_url, keys, tmp_path, BOOKINFO, BOOKINFO_SERVICES) as cluster:
        await apply(
            cluster,
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml",
            "virtual-service-ratings-test-delay.yaml",
        )
        shown = await page(cluster, "jason")
        assert stars(shown) == "error" and "no answer within 3s" in shown["reviews"]["cause"]
        assert stars(await page(cluster, "ana")) is None

        await apply(cluster, "virtual-service-ratings-test-abort.yaml")
        shown = await page(cluster, "jason")
        assert stars(shown) == "error", shown
        ratings = shown["reviews"]["ratings"]
        assert shown["reviews"]["version"] == "v2" and ratings["status"] == 500, shown
        assert ratings["cause"] == "fault_abort"
        assert stars(await page(cluster, "ana")) is None


async def test_request_timeouts(redis: Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Request timeouts: reviews on v2, ratings delayed 2 s: the page still shows black stars
    (nothing times out); with a 0.5 s timeout on the reviews route, the product page's two
    tries both get 504 and it shows reviews unavailable."""
    async with mesh(redis, redis_url, keys, tmp_path, BOOKINFO, BOOKINFO_SERVICES) as cluster:
        await apply(
            cluster,
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "request-timeouts-reviews-v2.yaml",
            "request-timeouts-ratings-delay.yaml",
        )
        assert stars(await page(cluster)) == "black"

        await apply(cluster, "request-timeouts-reviews-timeout.yaml")
        shown = await page(cluster)
        assert stars(shown) == "error" and shown["reviews"]["status"] == 504, shown
        assert shown["reviews"]["cause"] == "upstream_timeout"


async def test_header_operations_and_source_labels(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """The header example of the VirtualService reference: every request to reviews gets
    ``test: true``; answers of v1 lose their ``foo`` header, those of v2 keep it; 25/75.
    Then a ``sourceLabels`` rule: ratings called by reviews v3 go to ratings v2, by any other
    workload to v1."""
    async with mesh(redis, redis_url, keys, tmp_path, BOOKINFO, BOOKINFO_SERVICES) as cluster:
        await delete(cluster, "VirtualService", "reviews")  # Bookinfo's, for the same host
        await apply(cluster, "destination-rule-all.yaml", "headers-reviews.yaml")
        versions: Counter[str] = Counter()
        async with aiohttp.ClientSession() as session:
            for _ in range(40):
                url = f"{cluster.gateway_url}/reviews/0"
                async with session.get(url, headers={"Host": "reviews"}) as answer:
                    body = await answer.json()
                    versions[body["version"]] += 1
                    assert body["headers"]["test"] == "true"
                    assert answer.headers.get("foo") == ("bar" if body["version"] == "v2" else None)
        assert set(versions) == {"v1", "v2"} and versions["v1"] > versions["v2"], versions

        ratings = (BOOKINFO / "bookinfo.yaml").read_text().split("---")[2]
        assert "name: ratings" in ratings
        ratings_v2 = parse_text(
            ratings.replace("revision: v1", "revision: v2"), base_dir=str(BOOKINFO)
        )
        await cluster.client.apply(ratings_v2)
        await cluster.instances(lambda found: len(ready(found, "ratings")) == 2, timeout=60)
        await delete(cluster, "VirtualService", "reviews-route")
        await apply(cluster, "source-labels-ratings.yaml", "virtual-service-reviews-v3.yaml")
        assert {(await page(cluster))["reviews"]["ratings"]["version"] for _ in range(5)} == {"v2"}
        await apply(cluster, "request-timeouts-reviews-v2.yaml")  # reviews all on v2
        assert {(await page(cluster))["reviews"]["ratings"]["version"] for _ in range(5)} == {"v1"}


async def test_authorization_for_http_traffic(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Authorization for HTTP traffic: allow-nothing refuses the product page (403); the
    productpage-viewer policy lets GETs of it in, but details and reviews still refuse it;
    details-viewer and reviews-viewer admit bookinfo-productpage's calls (its service account),
    and ratings-viewer bookinfo-reviews' ones, after which every part of the page shows."""
    async with mesh(redis, redis_url, keys, tmp_path, BOOKINFO, BOOKINFO_SERVICES) as cluster:
        await apply(cluster, "authz-allow-nothing.yaml")
        async with aiohttp.ClientSession() as session:
            url = f"{cluster.gateway_url}/productpage"
            async with session.get(url, headers={"Host": "productpage"}) as answer:
                assert answer.status == 403 and answer.headers["x-shoal-cause"] == "denied"

        await apply(cluster, "authz-productpage-viewer.yaml")
        shown = await page(cluster)
        assert shown["details"]["status"] == 403 and shown["reviews"]["status"] == 403, shown

        await apply(cluster, "authz-details-viewer.yaml", "authz-reviews-viewer.yaml")
        pages = [await page(cluster) for _ in range(6)]
        assert all("error" not in shown["details"] for shown in pages), pages
        assert {stars(shown) for shown in pages} == {None, "error"}, pages  # ratings refuse

        await apply(cluster, "authz-ratings-viewer.yaml")
        pages = [await page(cluster) for _ in range(6)]
        assert {stars(shown) for shown in pages} == {None, "black", "red"}, pages


async def test_circuit_breaking(redis: Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Circuit breaking: with maxConnections 1 and http1MaxPendingRequests 1, a third request
    while two are in flight is refused at once (503 ``overflow``); the two complete."""
    async with mesh(redis, redis_url, keys, tmp_path, HTTPBIN, {"httpbin": 2}) as cluster:
        await apply(cluster, "circuit-breaking-httpbin.yaml")
        async with aiohttp.ClientSession() as session:

            async def call() -> tuple[int, str | None]:
                url = f"{cluster.gateway_url}/delay/1"
                async with session.get(url, headers={"Host": "httpbin"}) as answer:
                    return answer.status, answer.headers.get("x-shoal-cause")

            outcomes = await asyncio.gather(call(), call(), call())
        assert sorted(outcomes, key=lambda o: o[0]) == [(200, None), (200, None), (503, "overflow")]


def access_lines(state_dir: Path, revision: str) -> list[str]:
    """httpbin's access log lines of its ``revision`` instances."""
    logs = sorted((state_dir / "logs" / "instances").glob(f"httpbin-{revision}-*.log"))
    return [line for log in logs for line in log.read_text().splitlines() if "/headers" in line]


async def test_mirroring(redis: Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Mirroring: with all traffic on httpbin v1, only v1 logs the requests; with the mirror
    rule, v2 logs a copy of each (its Host with ``-shadow``) while the client is answered by
    v1."""
    async with mesh(redis, redis_url, keys, tmp_path, HTTPBIN, {"httpbin": 2}) as cluster:
        await apply(cluster, "mirroring-httpbin-v1.yaml")
        async with aiohttp.ClientSession() as session:

            async def call() -> str:
                url = f"{cluster.gateway_url}/headers"
                async with session.get(url, headers={"Host": "httpbin"}) as answer:
                    assert answer.status == 200
                    return str((await answer.json())["headers"]["Host"])

            assert [await call() for _ in range(3)] == ["httpbin"] * 3
            assert len(access_lines(tmp_path, "v1")) == 3 and not access_lines(tmp_path, "v2")

            await apply(cluster, "mirroring-httpbin-mirror.yaml")
            assert [await call() for _ in range(2)] == ["httpbin"] * 2

            async def v2_lines() -> list[str]:
                return access_lines(tmp_path, "v2")

            mirrored = await eventually(
                v2_lines,
                "v2 to log the two mirrored requests",
                until=lambda lines: len(lines) == 2,
            )
        assert all("host=httpbin-shadow" in line for line in mirrored), mirrored
        assert len(access_lines(tmp_path, "v1")) == 5
