"""Request ids and W3C trace context through the mesh, seen by a real app (httpbin's
``/headers``): the client gets ``x-request-id`` back; each hop sends its own span as the next
one's parent, so the instance never sees the client's span id, and a trace id the client sent
is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from shoal.http.trace import parse
from shoal.resources.manifest import load_files
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, Cluster, ready, running_cluster
from tests.support.wait import eventually

HTTPBIN = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "httpbin"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_ids_and_trace_context_reach_the_instance_and_the_client(cluster: Cluster) -> None:
    await cluster.client.apply(load_files([str(HTTPBIN)]))
    await cluster.instances(lambda f: len(ready(f, "httpbin")) == 2, timeout=30)
    url = cluster.gateway_url + "/headers"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Host": "httpbin"}) as r:
            assert r.status == 200
            rid = r.headers["x-request-id"]
            seen = (await r.json())["headers"]
        assert seen["X-Request-Id"] == rid and len(rid) == 32
        started = parse(seen["Traceparent"])
        assert started is not None and started[2] == "01"  # a new trace, sampled
        given = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        sent = {"Host": "httpbin", "traceparent": given, "x-request-id": "mine-1"}
        async with session.get(url, headers=sent) as r:
            assert r.headers["x-request-id"] == "mine-1"
            seen = (await r.json())["headers"]
        assert seen["X-Request-Id"] == "mine-1"
        trace_id, parent, _ = parse(seen["Traceparent"]) or ("", "", "")
        assert trace_id == CLIENT_TRACE and parent not in (CLIENT_SPAN, started[1])
        assert [v for k, v in seen.items() if k.lower() == "traceparent"] == [seen["Traceparent"]]
        async with session.get(cluster.gateway_url + "/", headers={"Host": "nowhere"}) as r:
            assert r.status == 404 and len(r.headers["x-request-id"]) == 32  # a refusal too


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_every_hop_logs_each_request_with_chained_spans(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """100 requests through the gateway to hello's /chain (hello calls world east-west,
    forwarding the trace context as the README says an app should): each has one JSON line in
    the gateway's access log and one per hop in the node's (inbound to hello, outbound from
    hello, inbound to world), all with its request id and trace id, each span the next one's
    parent; a client's traceparent keeps its trace id end to end."""
    logs = tmp_path / "access"
    async with running_cluster(redis, redis_url, keys, tmp_path, access_logs=logs) as cluster:
        await cluster.client.apply(load_files([str(EXAMPLE)]))
        await cluster.instances(
            lambda f: len(ready(f, "world")) == 1 and len(ready(f, "hello")) == 4
        )
        url = cluster.gateway_url + "/chain"
        rids = []
        async with aiohttp.ClientSession() as session:
            for i in range(100):
                sent = {"Host": "hello"}
                if i == 0:
                    sent["traceparent"] = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
                async with session.get(url, headers=sent) as r:
                    assert r.status == 200, await r.text()
                    rids.append(r.headers["x-request-id"])

        def logged() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return _lines(logs / "access-gateway.log"), _lines(logs / "access-node.log")

        gateway, node = await eventually(
            logged, "every hop's lines", until=lambda g: len(g[0]) >= 100 and len(g[1]) >= 300
        )
    edge = {e["request_id"]: e for e in gateway if e["authority"] == "hello"}
    assert set(rids) <= set(edge)
    by_rid: dict[str, list[dict[str, Any]]] = {}
    for e in node:
        by_rid.setdefault(e["request_id"], []).append(e)
    for rid in rids:
        first = edge[rid]
        assert first["status"] == 200 and first["service"] == "hello" and first["path"] == "/chain"
        hops = {(e["listener"], e["service"]): e for e in by_rid[rid]}
        into_hello = hops["inbound", "hello"]
        out_of_hello = hops["outbound", "world"]
        into_world = hops["inbound", "world"]
        assert {e["trace_id"] for e in (first, into_hello, out_of_hello, into_world)} == {
            first["trace_id"]
        }
        assert into_hello["parent_span_id"] == first["span_id"]
        # hello forwarded the traceparent the router gave it: its call is the router's child
        assert out_of_hello["parent_span_id"] == into_hello["span_id"]
        assert into_world["parent_span_id"] == out_of_hello["span_id"]
        assert all(e["status"] == 200 and e["duration_ms"] >= 0 for e in hops.values())
        assert first["route"] and out_of_hello["route"]  # (the routes that sent them)
    assert edge[rids[0]]["trace_id"] == CLIENT_TRACE
    assert edge[rids[0]]["parent_span_id"] == CLIENT_SPAN
