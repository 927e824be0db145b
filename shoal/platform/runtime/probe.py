"""Health probes of a local instance: a TCP connect, or an HTTP GET whose status is 2xx/3xx."""

from __future__ import annotations

import asyncio
import contextlib


async def probe(host: str, port: int, path: str | None, *, timeout: float) -> bool:
    """True when the instance answers: TCP accept (``path`` None) or HTTP 200-399 on ``path``."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if path is None:
                return True
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: shoal-probe\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
