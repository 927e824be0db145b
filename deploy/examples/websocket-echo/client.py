"""Talk to the ws-echo example through Shoal's gateway with the stock ``websockets`` client.

    .venv/bin/python deploy/examples/websocket-echo/client.py [ws://HOST:PORT/] [MESSAGE ...]

Connects to the address given (default ws://localhost:8080/) as host ``ws-echo``, sends each
message (text; one starting with ``0x`` as binary bytes) and prints what comes back.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

from websockets.asyncio.client import connect


async def main(url: str, messages: list[str]) -> None:
    where = urlsplit(url)
    secure = where.scheme == "wss"
    port = where.port or (443 if secure else 80)
    uri = f"{where.scheme}://ws-echo{where.path or '/'}"
    options = {"server_hostname": where.hostname} if secure else {}
    async with connect(uri, host=where.hostname, port=port, **options) as ws:  # type: ignore[arg-type]
        for message in messages:
            data: str | bytes = bytes.fromhex(message[2:]) if message.startswith("0x") else message
            await ws.send(data)
            print("echo:", await ws.recv())


if __name__ == "__main__":
    args = sys.argv[1:]
    url = args.pop(0) if args and "://" in args[0] else "ws://localhost:8080/"
    asyncio.run(main(url, args or ["hello", "0x00ff"]))
