"""The ``hypercorn-hello`` row: a bare ASGI app answering 200 "hello", served by hypercorn.

Run as ``python -m bench.hello_app --port P --tls-port T --cert C --key K``: one process, uvloop,
HTTP/1.1 and h2c (prior knowledge) on ``--port``, TLS with ALPN h2 on ``--tls-port``. It is the
ceiling of anything built on hypercorn: the same protocol stack with no work in the app.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

_BODY = b"hello"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
}
_BODY_MESSAGE = {"type": "http.response.body", "body": _BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with 200 "hello"; accept lifespan events."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(_START)
    await send(_BODY_MESSAGE)


def build_config(port: int, tls_port: int | None, cert: str | None, key: str | None) -> Config:
    """Hypercorn settings for the benchmark: no access log, no per-connection request cap."""
    config = Config()
    plain = f"127.0.0.1:{port}"
    if tls_port is not None:
        # With TLS on, ``bind`` is served with TLS and ``insecure_bind`` in clear text;
        # without it hypercorn ignores ``insecure_bind`` and serves ``bind`` in clear text.
        config.bind = [f"127.0.0.1:{tls_port}"]
        config.insecure_bind = [plain]
        config.certfile = cert
        config.keyfile = key
        config.alpn_protocols = ["h2", "http/1.1"]
    else:
        config.bind = [plain]
    config.accesslog = None
    config.keep_alive_max_requests = 1_000_000_000
    config.graceful_timeout = 0.5
    return config


async def serve_until_stopped(application: Any, config: Config) -> None:
    """Serve ``application`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(application, config, shutdown_trigger=stop.wait)


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The command line both hypercorn rows take."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    return parser


def main() -> None:
    """Parse the command line and serve."""
    args = arguments(__doc__).parse_args()
    config = build_config(args.port, args.tls_port, args.cert, args.key)
    uvloop.run(serve_until_stopped(app, config))


if __name__ == "__main__":
    main()
