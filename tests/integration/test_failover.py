"""Failover in the gateway's request path: retries, ejection, breaker, faults, POST safety."""

from __future__ import annotations

import asyncio
import collections

import aiohttp

from shoal.resources.manifest import parse_text
from shoal.store.acks import live_reports
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.backends import echo_backend
from tests.support.gateway import Gateway, get
from tests.support.wait import eventually

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s,
                       maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: tight
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /tight}}]
    route: [{destination: {host: echo, subset: tight}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {percentage: {value: 100}, httpStatus: 418}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /hang}}]
    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: "reset,5xx"}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /replayable}}]
    retries: {attempts: 2, retryOn: "connect-failure,reset,5xx", retryNonIdempotent: true}
    route: [{destination: {host: echo, subset: v1}}]
  - retries: {attempts: 2, retryOn: "connect-failure,reset,5xx"}
    route: [{destination: {host: echo, subset: v1}}]
"""


async def test_failing_instance_is_retried_around_and_ejected(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """An instance answering 503 costs the client nothing: retried elsewhere, then ejected."""
    async with echo_backend("good") as good, echo_backend("bad", status=lambda r: 503) as bad:
        await Registry(redis, keys).put_instances(
            [good.endpoint("echo", "v1"), bad.endpoint("echo", "v1")], ttl=60
        )
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        statuses = collections.Counter([(await get(gateway, "/"))[0] for _ in range(40)])
        assert statuses == {200: 40}
        assert len(bad.seen) == 3  # ejected after three consecutive 5xx
        # The gateway's report (its /metrics) counts the retries and the ejection.
        report = await eventually(
            lambda: live_reports(redis, keys),
            "the gateway to report its retries and the ejection",
            until=lambda reports: reports.get("gateway", {}).get("outliers"),
        )
        assert report["gateway"]["retried"] == {"echo": 3}
        assert report["gateway"]["outliers"] == {"echo/v1": [1, 1]}


async def test_hung_instance_times_out_per_try(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """A hanging instance is cut off by perTryTimeout and the request succeeds elsewhere."""
    async with echo_backend("good") as good, echo_backend("hung", delay=lambda r: 30) as hung:
        await Registry(redis, keys).put_instances(
            [good.endpoint("echo", "v1"), hung.endpoint("echo", "v1")], ttl=60
        )
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        results = await asyncio.gather(*(get(gateway, "/hang") for _ in range(6)))
        assert [r[0] for r in results] == [200] * 6
        assert hung.seen  # it was tried and cut off


async def test_post_that_reached_the_upstream_is_not_retried(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """A POST whose connection was reset after sending is answered 502, never replayed;
    a GET in the same situation is retried on another instance."""
    async with echo_backend("good") as good, echo_backend("dying", reset=lambda r: True) as dying:
        await Registry(redis, keys).put_instances([dying.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        await Registry(redis, keys).put_instances([good.endpoint("echo", "v1")], ttl=60)
        await gateway.settle()
        async with aiohttp.ClientSession() as s:
            posts = []
            for _ in range(4):
                async with s.post(
                    gateway.url + "/", data=b"pay once", headers={"Host": "echo"}
                ) as r:
                    posts.append((r.status, r.headers.get("x-shoal-cause")))
        dying_posts = [p for p in posts if p[0] != 200]
        assert dying_posts and all(p == (502, "upstream_reset") for p in dying_posts)
        good_posts = [s for s in good.seen if s["method"] == "POST"]
        assert len(good_posts) == len(posts) - len(dying_posts)  # none replayed there
        gets = [(await get(gateway, "/"))[0] for _ in range(4)]
        assert gets == [200] * 4


async def test_breaker_overflows_immediately(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """Over connectionPool.http.http2MaxRequests, a request gets 503 overflow at once."""
    async with echo_backend("slow", delay=lambda r: 0.5) as slow:
        await Registry(redis, keys).put_instances([slow.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        first = asyncio.create_task(get(gateway, "/tight"))
        await eventually(lambda: slow.seen, "the first request at the backend", timeout=5)
        status, headers, _ = await get(gateway, "/tight")
        assert (status, headers["x-shoal-cause"]) == (503, "overflow")
        assert (await first)[0] == 200


async def test_fault_abort(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """A route's fault.abort answers its status without reaching an instance."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        status, headers, _ = await get(gateway, "/abort")
        assert (status, headers["x-shoal-cause"]) == (418, "fault_abort")
        assert not one.seen


async def test_route_can_opt_posts_into_retries(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """With retryNonIdempotent the same reset POST is replayed on another instance."""
    async with echo_backend("good") as good, echo_backend("dying", reset=lambda r: True) as dying:
        await Registry(redis, keys).put_instances(
            [dying.endpoint("echo", "v1"), good.endpoint("echo", "v1")], ttl=60
        )
        await gateway.client.apply(parse_text(RULES))
        await gateway.settle()
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                async with s.post(
                    gateway.url + "/replayable",
                    data=b"idempotent by design",
                    headers={"Host": "echo"},
                ) as r:
                    assert r.status == 200
        assert dying.seen  # some POSTs reached it first and were replayed on "good"
