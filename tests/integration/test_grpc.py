"""gRPC through Shoal: a stock grpcio server run as a ``protocol: grpc`` Service, a stock grpcio
client through the gateway (h2c): the router speaks HTTP/2 to the instance, and statuses,
trailing metadata, streams and deadlines arrive as the server sent them."""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import Cluster, ready, running_cluster
from tests.support.procfs import environ_of
from tests.support.tls import self_signed
from tests.support.wait import eventually, eventually_sync

SERVER = """
import sys, threading
from concurrent import futures
import grpc

def unary(request, context):
    if request == b"fail":
        context.set_trailing_metadata((("detail-bin", b"\\x00\\x01"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b"echo:" + request

def server_stream(request, context):
    for i in range(10):
        yield b"%d" % i

def ping_pong(requests, context):
    # One answer per message, as each arrives; the call's end (a cancellation: the client
    # never ends its side) is printed to the instance's log.
    mark = dict(context.invocation_metadata()).get("mark", "")
    context.add_callback(lambda: print("ended:", mark, flush=True))
    for request in requests:
        yield b"pong:" + request

def client_stream(requests, context):
    return b"+".join(requests)

def hold(request, context):
    # Answers only once the call has ended (its deadline): never in time.
    ended = threading.Event()
    context.add_callback(ended.set)
    ended.wait(60)
    return b"late"

handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Hold": grpc.unary_unary_rpc_method_handler(hold),
    "PingPong": grpc.stream_stream_rpc_method_handler(ping_pong),
}
server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

SERVICE = {
    "apiVersion": "shoal/v1",
    "kind": "Service",
    "metadata": {"name": "echo-grpc"},
    "spec": {"command": [sys.executable, "-c", SERVER, "$PORT"], "protocol": "grpc"},
}


DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-grpc}
spec:
  selector: {matchLabels: {app: echo-grpc}}
  action: DENY
  rules: [{}]
"""


@dataclass
class Through:
    """A running cluster and a grpcio channel to its gateway for the echo-grpc service."""

    cluster: Cluster
    channel: grpc.Channel


@pytest.fixture(params=["h2c", "tls", "east-west"])
async def through(
    request: pytest.FixtureRequest, redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> AsyncIterator[Through]:
    """A channel to the gateway — h2c, or TLS h2 (ALPN) — or east-west: to the outbound
    listener an instance reaches through ``$SHOAL_MESH_URL`` (h2c), once echo-grpc runs."""
    cert = self_signed(tmp_path)
    async with running_cluster(redis, redis_url, keys, tmp_path, tls=cert) as cluster:
        await cluster.client.apply(parse_text(json.dumps(SERVICE)))
        found = await cluster.instances(lambda f: bool(ready(f, "echo-grpc")), timeout=30)
        if request.param == "east-west":
            pid = ready(found, "echo-grpc")[0].pid
            assert pid is not None
            mesh = environ_of(pid)["SHOAL_MESH_URL"].removeprefix("http://")
            options = [("grpc.default_authority", "echo-grpc")]
            with grpc.insecure_channel(mesh, options) as chan:
                yield Through(cluster, chan)
        elif request.param == "h2c":
            options = [("grpc.default_authority", "echo-grpc")]
            with grpc.insecure_channel(f"127.0.0.1:{cluster.gateway_port}", options) as chan:
                yield Through(cluster, chan)
        else:
            credentials = grpc.ssl_channel_credentials(cert[0].read_bytes())
            options = [("grpc.ssl_target_name_override", "localhost")]
            options.append(("grpc.default_authority", "echo-grpc"))
            target = f"127.0.0.1:{cluster.tls_port}"
            with grpc.secure_channel(target, credentials, options) as chan:
                yield Through(cluster, chan)


def ping_pong(
    channel: grpc.Channel, count: int, *, mark: str = "", cancel: bool = False
) -> list[bytes]:
    """A bidirectional call that sends each ping only once the previous pong is back: it ends
    (DEADLINE_EXCEEDED after 30 s) unless every hop relays each message as it comes. After
    ``count`` pongs the client ends its side, or with ``cancel`` cancels the call instead."""
    pings: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (ping := pings.get()) is not None:
            yield ping

    call = channel.stream_stream("/test.Echo/PingPong")(
        requests(), timeout=30, metadata=(("mark", mark),)
    )
    pongs: list[bytes] = []
    pings.put(b"0")
    for pong in call:
        pongs.append(pong)
        if len(pongs) < count:
            pings.put(b"%d" % len(pongs))
        elif cancel:
            call.cancel()
            break
        else:
            pings.put(None)
    return pongs


def calls(channel: grpc.Channel) -> dict[str, object]:
    """Every RPC kind, as a client sees it (blocking: run in a thread)."""
    seen: dict[str, object] = {}
    seen["unary"] = channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=10)
    try:
        channel.unary_unary("/test.Echo/Unary")(b"fail", timeout=10)
    except grpc.RpcError as e:
        seen["error"] = (e.code(), e.details(), dict(e.trailing_metadata() or ()))
    seen["server_stream"] = list(channel.unary_stream("/test.Echo/ServerStream")(b"", timeout=10))
    seen["ping_pong"] = ping_pong(channel, 10)
    seen["client_stream"] = channel.stream_unary("/test.Echo/ClientStream")(
        iter([b"a", b"b", b"c"]), timeout=10
    )
    started = time.monotonic()
    try:
        channel.unary_unary("/test.Echo/Hold")(b"", timeout=0.5)
    except grpc.RpcError as e:
        seen["deadline"] = (e.code(), time.monotonic() - started)
    return seen


GHOST = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost}
spec:
  hosts: [ghost]
  http:
  - route: [{destination: {host: no-such-service}}]
"""


def refused(channel: grpc.Channel) -> tuple[object, str, dict[str, object]]:
    """What a unary call through ``channel`` gets: code, details and initial metadata."""
    try:
        channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details(), dict(e.initial_metadata() or ())
    raise AssertionError("answered")


@pytest.mark.timeout(90)
async def test_shoal_refuses_a_grpc_call_in_grpc(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Shoal's own answers to a gRPC request are gRPC: a route with no instance behind it is
    UNAVAILABLE (14), an unknown host UNIMPLEMENTED (404's mapping), with x-shoal-cause."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(GHOST))
        target = f"127.0.0.1:{cluster.gateway_port}"
        with (
            grpc.insecure_channel(target, [("grpc.default_authority", "ghost")]) as ghost,
            grpc.insecure_channel(target, [("grpc.default_authority", "nowhere")]) as nowhere,
        ):
            code, details, metadata = await asyncio.to_thread(refused, ghost)
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            assert metadata.get("x-shoal-cause") == details.split(":")[0], (metadata, details)
            code, details, metadata = await asyncio.to_thread(refused, nowhere)
            assert code == grpc.StatusCode.UNIMPLEMENTED, (code, details)
            assert metadata.get("x-shoal-cause"), metadata


@pytest.mark.timeout(90)
async def test_grpc_through_the_gateway(through: Through) -> None:
    """Unary, an error status with details and binary trailing metadata, a server stream that
    arrives message by message, a client stream, and a deadline."""
    seen = await asyncio.to_thread(calls, through.channel)
    assert seen["unary"] == b"echo:hi"
    code, details, trailing = seen["error"]  # type: ignore[misc]
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert trailing["detail-bin"] == b"\x00\x01"
    assert seen["server_stream"] == [b"%d" % i for i in range(10)]
    # Each message relayed as it comes, both ways: the next ping waits for the last pong.
    assert seen["ping_pong"] == [b"pong:%d" % i for i in range(10)]
    assert seen["client_stream"] == b"a+b+c"
    code, elapsed = seen["deadline"]  # type: ignore[misc]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and elapsed < 1.5


@pytest.mark.timeout(90)
async def test_a_router_refusal_reaches_a_grpc_client_as_grpc(through: Through) -> None:
    """An AuthorizationPolicy denying the service: the node router's 403 reaches the client as
    PERMISSION_DENIED, with x-shoal-cause: denied."""
    await through.cluster.client.apply(parse_text(DENY))

    def call() -> tuple[object, str, dict[str, object]] | None:
        try:
            through.channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details(), dict(e.initial_metadata() or ())
        return None  # answered: the router does not have the policy yet

    denied = await asyncio.to_thread(
        eventually_sync, call, "the router to deny", until=lambda got: got is not None, timeout=20
    )
    assert denied is not None
    code, details, metadata = denied
    assert (code, metadata.get("x-shoal-cause")) == (grpc.StatusCode.PERMISSION_DENIED, "denied")
    assert details == "denied", details


HANG = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: hang}}
spec:
  app: apps:hang
  workdir: {Path(__file__).resolve().parents[1] / "support"}
  protocol: h2c
  health: {{path: /healthz}}
"""


@pytest.mark.timeout(90)
async def test_a_grpc_timeout_header_is_shoals_deadline_too(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A gRPC call whose ``grpc-timeout`` passes before the instance answers (this one never
    does, whatever the header says) is ended by Shoal at that deadline: DEADLINE_EXCEEDED with
    x-shoal-cause (curl sends the header and would wait 10 s on its own)."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(HANG))
        await cluster.instances(lambda f: bool(ready(f, "hang")), timeout=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http2-prior-knowledge", "-i", "--max-time", "10",
            "-H", "Host: hang", "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", "grpc-timeout: 300m", "--data-binary", "@-",
            f"http://127.0.0.1:{cluster.gateway_port}/test.Echo/Hang",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate(b"\x00\x00\x00\x00\x00")  # one empty message
        elapsed = loop.time() - started
    text = out.decode(errors="replace").lower()
    assert "grpc-status: 4" in text and "x-shoal-cause: upstream_timeout" in text, text
    assert 0.3 <= elapsed < 2.0, elapsed


@pytest.mark.timeout(90)
async def test_a_client_cancellation_reaches_the_instance(through: Through, tmp_path: Path) -> None:
    """A client that cancels a stream midway (it never ends its side, so only the cancellation
    can end the instance's call): the instance's call ends too (its callback runs), through
    the gateway, the HTTP/1.1 hop and the router's HTTP/2 stream."""
    mark = f"call-{time.monotonic_ns()}"
    pongs = await asyncio.to_thread(ping_pong, through.channel, 3, mark=mark, cancel=True)
    assert len(pongs) == 3

    async def logged() -> str:
        return "".join(
            p.read_text() for p in (tmp_path / "logs" / "instances").glob("echo-grpc-*.log")
        )

    await eventually(
        logged,
        "the instance to see the cancellation",
        until=lambda text: f"ended: {mark}" in text,
        timeout=10,
    )
