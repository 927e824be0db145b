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
