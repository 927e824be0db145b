"""A request keeps the snapshot it was routed on: a node leaving while its body is read does
not pull the node router's address from under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shoal.http.refusal import Refusal
from shoal.mesh.forward import Forwarded, Forwarder, Outbound
from shoal.mesh.proxy_state import ProxyState
from shoal.mesh.upstream import Upstreams
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import to_document
from shoal.resources.model import Service
from shoal.store.watch import View
from tests.support.tls import mesh_contexts
from tests.support.upstream import read_body

TRUST_DOMAIN = "shoal.test"
HELLO = Service(name="hello", revision="v1", app="app:hello")


def view(revision: int, mesh: str | None, *instances: Endpoint) -> View:
    """A store view with hello/v1, its instances and node n1 (live when ``mesh`` is given)."""
    doc: Any = to_document(HELLO)
    nodes = {"n1": {"mesh": mesh}} if mesh else {}
    return View(
        revision=revision,
        config=MappingProxyType({"Service": MappingProxyType({HELLO.key: doc})}),
        instances=MappingProxyType({e.key: e for e in instances}),
        nodes=MappingProxyType(nodes),
    )


async def test_a_node_leaving_while_the_body_is_read_changes_nothing(tmp_path: Path) -> None:
    """The snapshot swaps (node n1 gone) between two pieces of a POST body being buffered; the
    request still goes to n1's router, as routed, and gets its answer."""
    server_tls, client_tls = mesh_contexts(
        tmp_path,
        TRUST_DOMAIN,
        f"spiffe://{TRUST_DOMAIN}/node/n1",
        f"spiffe://{TRUST_DOMAIN}/gateway",
    )
    seen: list[bytes] = []

    async def router(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(router, "127.0.0.1", 0, ssl=server_tls)
    mesh = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    instance = Endpoint(
        id="a1",
        service="hello",
        revision="v1",
        node="n1",
        address="127.0.0.1",
        port=1,
        labels=(("app", "hello"), ("version", "v1")),
        state="ready",
        mtls=True,
    )
    state = ProxyState()
    state.update(view(1, mesh, instance))
    upstreams = Upstreams()
    forwarder = Forwarder(state, upstreams, trust_domain=TRUST_DOMAIN, mesh_tls=lambda: client_tls)

    async def body() -> AsyncIterator[bytes]:
        yield b"first "
        state.update(view(2, None))  # n1 left: the new snapshot has neither it nor hello/a1
        assert "n1" not in state.snapshot.meshes
        yield b"second"

    try:
        result = await forwarder.forward(
            Outbound(
                method="POST",
                host="hello",
                path="/",
                raw_target="/",
                query="",
                headers=[(b"host", b"hello"), (b"content-length", b"12")],
                fields={"host": "hello", "content-length": "12"},
                body=body(),
                content_length=12,
            )
        )
        assert not isinstance(result, Refusal), result
        assert isinstance(result, Forwarded) and result.response.status == 200
        assert await read_body(result.response) == b"ok"
        result.done()
    finally:
        await upstreams.close()
        server.close()
        await server.wait_closed()
    assert seen and seen[0].endswith(b"first second")
    assert b"x-shoal-instance: hello/a1" in seen[0]
