"""ASGI apps for tests that Shoal runs as real instances (``app: apps:<name>``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``ok`` after 0.2 s (``/healthz`` at once): requests pile up as concurrency."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/healthz":
        await asyncio.sleep(0.2)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def failing(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 500 to everything but ``/healthz``: a bad release that passes health checks."""
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/healthz" else 500
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"boom"})


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers JSON of what arrived — HTTP version, method, raw path, raw query, header pairs,
    body length and sha256 — and copies an ``x-echo`` request header into its response."""
    import hashlib
    import json

    if scope["type"] != "http":
        return
    sha, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        sha.update(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            break
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
    record = {
        "http_version": scope["http_version"],
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": headers,
        "body_len": size,
        "body_sha256": sha.hexdigest(),
    }
    out = [(b"content-type", b"application/json")]
    out += [(b"x-echo", v) for n, v in scope["headers"] if n == b"x-echo"]
    await send({"type": "http.response.start", "status": 200, "headers": out})
    await send({"type": "http.response.body", "body": json.dumps(record).encode()})


async def hang(scope: Scope, receive: Receive, send: Send) -> None:
    """Never answers (``/healthz`` excepted): it waits until its client goes away."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    while (await receive())["type"] != "http.disconnect":
        pass


async def sse(scope: Scope, receive: Receive, send: Send) -> None:
    """An event stream: ``?n=N&gap=S`` sends N events S seconds apart (default: 3, 1 s)."""
    from urllib.parse import parse_qs

    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    count, gap = int(query.get("n", ["3"])[0]), float(query.get("gap", ["1"])[0])
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for n in range(count):
        if n:
            await asyncio.sleep(gap)  # the stream's own pace: what the test is about
        event = f"data: {n}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def fetch(scope: Scope, receive: Receive, send: Send) -> None:
    """Calls out through the mesh (``$SHOAL_MESH_URL``): GET of its own path with the Host
    named by the request's ``x-fetch-host`` header; answers with that call's status and body
    (``/healthz`` at once)."""
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    host = headers.get(b"x-fetch-host")
    if scope["path"] == "/healthz" or host is None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    import os

    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = os.environ["SHOAL_MESH_URL"] + scope["path"]
        async with session.get(url, headers={"Host": host.decode()}) as answer:
            status, body = answer.status, await answer.read()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})
