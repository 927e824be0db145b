"""The ``naive-proxy`` row: the obvious hypercorn + aiohttp reverse proxy, for reference.

Run as ``python -m bench.naive_proxy --upstream PORT --port P --tls-port T --cert C --key K``.
Every request is forwarded with one pooled ``aiohttp.ClientSession`` to ``127.0.0.1:PORT`` and
the answer streamed back: no routing, no checks, no retries. Shoal's gateway does all of those
and must still be faster than this (issue: the data path).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import uvloop

from bench.hello_app import arguments, build_config, serve_until_stopped


def proxy(upstream: str) -> Any:
    """An ASGI app forwarding every request to ``upstream`` (``http://host:port``)."""
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        url = upstream + scope["raw_path"].decode() + ("?" + query if query else "")
        headers = [(n.decode(), v.decode()) for n, v in scope["headers"] if n != b"host"]
        async with session.request(scope["method"], url, headers=headers, data=body) as r:
            await send(
                {
                    "type": "http.response.start",
                    "status": r.status,
                    "headers": [
                        (n.lower(), v)
                        for n, v in r.raw_headers
                        if n.lower() not in (b"connection", b"transfer-encoding")
                    ],
                }
            )
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    """Parse the command line and serve."""
    parser = arguments(__doc__)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    config = build_config(args.port, args.tls_port, args.cert, args.key)
    uvloop.run(serve_until_stopped(proxy(f"http://127.0.0.1:{args.upstream}"), config))


if __name__ == "__main__":
    main()
