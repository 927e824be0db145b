"""What a client sends through the gateway, the mTLS hop and the node router arrives at the
instance exactly as sent (curl as the client, Shoal running the instance)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from shoal.http.limits import EdgeLimits
from shoal.resources.manifest import parse_text
from shoal.store.acks import live_reports
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import Cluster, ready, running_cluster
from tests.support.wait import eventually

SUPPORT = Path(__file__).resolve().parents[1] / "support"

ECHO = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: echo}}
spec:
  app: apps:echo
  workdir: {SUPPORT}
  revision: v1
"""


async def curl(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run curl (``stdin`` piped in, for ``-T -``); its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    return proc.returncode or 0, out, err


async def deploy_echo(cluster: Cluster) -> None:
    """The echo app as a Shoal service with one ready instance."""
    await cluster.client.apply(parse_text(ECHO))
    await cluster.instances(lambda found: len(ready(found, "echo")) == 1, timeout=30)


async def echoed(cluster: Cluster, *args: str) -> dict[str, Any]:
    """What the echo instance saw of one curl request through the gateway."""
    code, out, err = await curl("-H", "Host: echo", *args)
    assert code == 0, err
    record: dict[str, Any] = json.loads(out)
    return record


async def test_query_bytes_and_a_big_header_arrive_unchanged(cluster: Cluster) -> None:
    """%25 %2F %3F %23 %20 '+' and UTF-8 escapes in the query reach the instance byte for byte;
    a 32 KiB header goes there and (copied by the instance) comes back."""
    await deploy_echo(cluster)
    query = "p=100%25&y=%2F%3F%26%3D&h=%23frag&x=a%20b+c&q=%E2%9C%93"
    big = "v" * 32 * 1024
    code, out, err = await curl(
        "-i", "-H", "Host: echo", "-H", f"X-Echo: {big}", f"{cluster.gateway_url}/q?{query}"
    )
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert body[:1] == b"{", (head[:300], body[:300])  # seen once in a full run: say what came
    record = json.loads(body)
    assert record["query"] == query
    assert record["raw_path"] == "/q"
    assert f"\r\nx-echo: {big}".encode() in head.lower()


async def test_what_the_edge_admits_every_hop_admits(cluster: Cluster) -> None:
    """As many header fields as the edge takes (100), with Shoal's forwarding fields added on
    the way, reach the instance through the router."""
    await deploy_echo(cluster)
    fields = [arg for i in range(97) for arg in ("-H", f"X-F{i}: {i}")]  # curl's 3 make 100
    code, out, err = await curl("-i", "-H", "Host: echo", *fields, f"{cluster.gateway_url}/many")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    body = out.partition(b"\r\n\r\n")[2]
    assert sum(1 for name, _ in json.loads(body)["headers"] if name[3:].isdigit()) == 97


async def test_bodies_without_length_and_with_expect_arrive_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A chunked upload of 10 KB, the same over HTTP/2 without content-length, and a 2 MiB
    upload with Expect: 100-continue (curl's own, above 1 MB) arrive intact; the last gets one
    100 and one final answer."""
    await deploy_echo(cluster)
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(bytes(range(256)) * 40)
    large.write_bytes(bytes(range(256)) * 8192)
    url = f"{cluster.gateway_url}/upload"
    record = await echoed(
        cluster, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{small}", url
    )
    assert record["body_len"] == 10240
    assert record["body_sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    # HTTP/2 with no content-length (curl streams stdin): the length-less h2 upload.
    code, out, err = await curl(
        "--http2-prior-knowledge", "-H", "Host: echo", "-T", "-", url, stdin=small.read_bytes()
    )
    assert code == 0, err
    record = json.loads(out)
    assert (record["method"], record["body_len"]) == ("PUT", 10240)
    assert record["body_sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    code, out, err = await curl("-v", "-H", "Host: echo", "--data-binary", f"@{large}", url)
    assert code == 0, err
    assert err.count(b"< HTTP/1.1 100") == 1, err.decode(errors="replace")
    assert err.count(b"< HTTP/1.1 200") == 1
    record = json.loads(out)
    assert record["body_sha256"] == hashlib.sha256(large.read_bytes()).hexdigest()


async def test_hop_by_hop_fields_never_reach_the_instance(cluster: Cluster) -> None:
    """Connection, the fields it names, Keep-Alive, TE, Upgrade, Proxy-Connection and Expect
    stop at the proxies; end-to-end fields pass."""
    await deploy_echo(cluster)
    record = await echoed(
        cluster,
        "-H",
        "Connection: keep-alive, x-private",
        "-H",
        "X-Private: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "X-Kept: yes",
        f"{cluster.gateway_url}/h",
    )
    names = {name for name, _ in record["headers"]}
    assert not names & {"connection", "x-private", "keep-alive", "te", "proxy-connection"}
    assert ["x-kept", "yes"] in record["headers"]


HANG = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: hang}}
spec:
  app: apps:hang
  workdir: {SUPPORT}
  revision: v1
  health: {{path: /healthz}}
"""


async def test_a_client_that_goes_away_leaves_nothing_in_flight(cluster: Cluster) -> None:
    """A client that gives up on a request the instance never answers: the gateway and the
    node router both count it in flight, then neither does once the client is gone."""
    await cluster.client.apply(parse_text(HANG))
    await cluster.instances(lambda found: len(ready(found, "hang")) == 1, timeout=30)

    async def in_flight() -> list[int]:
        reports = await live_reports(cluster.client.redis, cluster.client.keys)
        return [r.get("in_flight", {}).get("hang", 0) for r in reports.values()]

    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.gateway_port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: hang\r\n\r\n")
    await eventually(in_flight, "the request in flight at a proxy", until=any, timeout=10)
    writer.close()
    await eventually(in_flight, "nothing in flight", until=lambda n: not any(n), timeout=10)
    assert await reader.read() == b""

    # Over HTTP/2 the client resets the stream and keeps the connection: the same.
    import h2.config
    import h2.connection

    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.gateway_port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "hang"), (":path", "/")]
    conn.send_headers(1, request, end_stream=True)
    writer.write(conn.data_to_send())
    await eventually(in_flight, "the h2 request in flight", until=any, timeout=10)
    conn.reset_stream(1)
    writer.write(conn.data_to_send())
    await eventually(in_flight, "nothing in flight after RST_STREAM", until=lambda n: not any(n))
    writer.close()


SSE = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: events}}
spec:
  app: apps:sse
  workdir: {SUPPORT}
  revision: v1
"""


async def test_an_event_stream_outlives_the_read_timeout_on_h1_and_h2c(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A response streaming an event every 1.5 s, for 4.5 s, is not cut by a 1 s read timeout
    while the client sends nothing (HTTP/1.1 and h2c)."""
    limits = EdgeLimits(read_timeout=1.0)
    async with running_cluster(redis, redis_url, keys, tmp_path, limits=limits) as cluster:
        await cluster.client.apply(parse_text(SSE))
        await cluster.instances(lambda found: len(ready(found, "events")) == 1, timeout=30)
        url = f"{cluster.gateway_url}/stream?n=4&gap=1.5"
        want = b"".join(f"data: {n}\n\n".encode() for n in range(4))
        for protocol in ("--http1.1", "--http2-prior-knowledge"):
            code, out, err = await curl(protocol, "-N", "-H", "Host: events", url)
            assert code == 0, err
            assert out == want, protocol


async def test_a_200_mb_chunked_upload_arrives_whole_with_flat_memory(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """200 MB uploaded chunked (no length) through gateway → mTLS → router → instance arrives
    intact, and the proxies (this process) never hold more than a few MB of it."""
    size = 200 * 1024 * 1024
    path = tmp_path / "big.bin"
    block = hashlib.sha256(b"shoal").digest() * 32768  # 1 MiB
    sha = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
            sha.update(block)
    limits = EdgeLimits(max_body_bytes=300 * 1024 * 1024)
    async with running_cluster(redis, redis_url, keys, tmp_path, limits=limits) as cluster:
        await deploy_echo(cluster)
        base, peak = rss(), 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss() - base)
                await asyncio.sleep(0.05)  # the sampling period

        sampler = asyncio.create_task(sample())
        try:
            record = await echoed(
                cluster,
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                f"@{path}",
                f"{cluster.gateway_url}/big",
            )
        finally:
            done.set()
            await sampler
    assert record["body_len"] == size
    assert record["body_sha256"] == sha.hexdigest()
    assert peak < 64 * 1024 * 1024, f"proxies grew by {peak / 2**20:.0f} MiB"


def rss() -> int:
    """This process's resident memory, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


TRAILERS = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: trailers}}
spec:
  command: [python3, {SUPPORT}/trailers_server.py, "$PORT"]
  revision: v1
"""


async def h2_get(port: int, host: str, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """One h2c (prior knowledge) GET with ``te: trailers``: status, body, trailers."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", path)]
    conn.send_headers(1, [*headers, ("te", "trailers")], end_stream=True)
    writer.write(conn.data_to_send())
    status, body, trailers = 0, b"", []
    try:
        while True:
            data = await reader.read(65536)
            assert data, "connection closed before the stream ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(len(event.data), 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body, trailers
            writer.write(conn.data_to_send())
    finally:
        writer.close()


async def h1_get_raw(port: int, host: str, path: str) -> bytes:
    """One HTTP/1.1 GET with ``te: trailers`` on a fresh connection: the response's bytes up
    to the end of a chunked body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nte: trailers\r\n\r\n".encode())
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            return head + await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_trailers_from_an_http1_instance_reach_http1_and_http2_clients(
    cluster: Cluster,
) -> None:
    """An instance's chunked trailers cross the router (HTTP/1.1) and reach an HTTP/1.1 client
    as chunked trailers, and an h2c client that sent te: trailers as HTTP/2 trailers; an answer
    without trailers still ends cleanly."""
    await cluster.client.apply(parse_text(TRAILERS))
    await deploy_echo(cluster)
    await cluster.instances(lambda found: len(ready(found, "trailers")) == 1, timeout=30)
    raw = await h1_get_raw(cluster.gateway_port, "trailers", "/t")
    assert raw.startswith(b"HTTP/1.1 200 ") and b"\r\ntransfer-encoding: chunked\r\n" in raw
    assert raw.endswith(b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n")
    status, body, trailers = await h2_get(cluster.gateway_port, "trailers", "/t")
    assert (status, body) == (200, b"hello")
    assert (b"grpc-status", b"0") in trailers and (b"grpc-message", b"fine") in trailers
    status, body, trailers = await h2_get(cluster.gateway_port, "echo", "/none")
    assert status == 200 and json.loads(body)["raw_path"] == "/none"
    assert trailers == []


async def test_an_h2c_instance_is_spoken_to_in_http2(cluster: Cluster) -> None:
    """A ``protocol: h2c`` Service's instance gets HTTP/2 from its router; the query, headers
    and a chunked 2 MB upload arrive as sent, and the answer comes back."""
    h2c = ECHO.replace("revision: v1", "revision: v1\n  protocol: h2c")
    await cluster.client.apply(parse_text(h2c))
    await cluster.instances(lambda found: len(ready(found, "echo")) == 1, timeout=30)
    body = bytes(range(256)) * 8192
    record = await _upload(cluster, body)
    assert record["http_version"] == "2"
    assert record["query"] == "a=%2F%20b" and record["raw_path"] == "/up"
    assert record["body_len"] == len(body)
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["x-echo", "yes"] in record["headers"]  # (hypercorn shows :authority as "host")
    assert not [n for n, _ in record["headers"] if n in ("connection", "transfer-encoding")]


async def _upload(cluster: Cluster, body: bytes) -> dict[str, Any]:
    code, out, err = await curl(
        "-H", "Host: echo", "-H", "X-Echo: yes", "-H", "Transfer-Encoding: chunked",
        "--data-binary", "@-", f"{cluster.gateway_url}/up?a=%2F%20b", stdin=body,
    )  # fmt: skip
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result
