"""Request ids and W3C trace context through the mesh, seen by a real app (httpbin's
``/headers``): the client gets ``x-request-id`` back; each hop sends its own span as the next
one's parent, so the instance never sees the client's span id, and a trace id the client sent
is kept."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from shoal.http.trace import parse
from shoal.resources.manifest import load_files
from tests.support.cluster import Cluster, ready

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
