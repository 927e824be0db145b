"""A stock grpcio server, run by Shoal as a ``protocol: grpc`` Service (see echo.yaml).

``echo.Echo/Say`` answers ``echo: <request>``; ``echo.Echo/Count`` streams ten messages 50 ms
apart; a request ``fail`` gets NOT_FOUND with a detail; the standard health check
(``grpc.health.v1.Health/Check``, what ``shoal drill failover`` calls) says SERVING. Messages
are raw bytes (no protobuf code generation needed). Served on 127.0.0.1:$PORT; the node router
speaks HTTP/2 to it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

REVISION = os.environ.get("SHOAL_REVISION", "dev").encode()


def say(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "asked to fail")
    context.set_trailing_metadata((("revision", REVISION.decode()),))
    return b"echo: " + request


def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(10):
        yield b"%d" % i
        time.sleep(0.05)


def check(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"\x08\x01"  # HealthCheckResponse{status: SERVING}, protobuf-encoded


def main() -> None:
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    health = {"Check": grpc.unary_unary_rpc_method_handler(check)}
    server = grpc.server(futures.ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("echo.Echo", handlers),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
