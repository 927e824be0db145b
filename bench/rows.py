"""The rows of the benchmark: what each one starts as the server under test.

A row's ``start`` gets a ``RowContext`` and returns the running server under test. Rows that
proxy get a fresh backend (nginx, 200 "hello") started by the harness before their ``start``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import servers, shoal_rows
from bench.process import RunningServer
from bench.tls import TLSFiles
from bench.tools import Toolbox


@dataclass(frozen=True, slots=True, kw_only=True)
class RowContext:
    """What a row's start function may use."""

    tools: Toolbox
    workdir: Path
    tls: TLSFiles
    server_cpu: int | None
    backend_port: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One kind of server under test."""

    name: str
    description: str
    tools: tuple[str, ...]
    needs_backend: bool
    start: Callable[[RowContext], RunningServer]


def _backend_port(ctx: RowContext) -> int:
    if ctx.backend_port is None:
        raise RuntimeError("this row needs a backend but none was started")
    return ctx.backend_port


def _direct(ctx: RowContext) -> RunningServer:
    # The backend itself is the server under test here, so it gets the server core.
    server = servers.start_backend(ctx.tools, ctx.workdir, ctx.tls, ctx.server_cpu)
    server.name = "direct"
    return server


def _nginx_proxy(ctx: RowContext) -> RunningServer:
    port = _backend_port(ctx)
    return servers.start_nginx_proxy(ctx.tools, ctx.workdir, ctx.tls, port, ctx.server_cpu)


def _haproxy(ctx: RowContext) -> RunningServer:
    port = _backend_port(ctx)
    return servers.start_haproxy(ctx.tools, ctx.workdir, ctx.tls, port, ctx.server_cpu)


def _hypercorn_hello(ctx: RowContext) -> RunningServer:
    return servers.start_hypercorn_hello(ctx.workdir, ctx.tls, ctx.server_cpu)


def _naive_proxy(ctx: RowContext) -> RunningServer:
    return servers.start_naive_proxy(ctx.workdir, ctx.tls, _backend_port(ctx), ctx.server_cpu)


def _shoal_gateway(ctx: RowContext) -> RunningServer:
    return shoal_rows.start_shoal_gateway(_backend_port(ctx), ctx.tls)


def _shoal_gateway_logged(ctx: RowContext) -> RunningServer:
    log = str(ctx.workdir / "access-gateway.log")
    return shoal_rows.start_shoal_gateway(
        _backend_port(ctx), ctx.tls, access_log=log, name="shoal-gateway-logged"
    )


def _shoal_mesh(ctx: RowContext) -> RunningServer:
    return shoal_rows.start_shoal_mesh(_backend_port(ctx), ctx.tls)


def _shoal_router(ctx: RowContext) -> RunningServer:
    return shoal_rows.start_shoal_router(ctx.tools.path("haproxy"), _backend_port(ctx))


ROWS: tuple[Row, ...] = (
    Row(
        name="direct",
        description="load generator straight to the backend nginx (the floor of any hop)",
        tools=("nginx",),
        needs_backend=False,
        start=_direct,
    ),
    Row(
        name="nginx-proxy",
        description="nginx reverse proxy, 1 worker, keepalive upstream pool, HTTP/1.1 upstream",
        tools=("nginx",),
        needs_backend=True,
        start=_nginx_proxy,
    ),
    Row(
        name="haproxy",
        description="haproxy reverse proxy, nbthread 1, http-reuse always",
        tools=("nginx", "haproxy"),
        needs_backend=True,
        start=_haproxy,
    ),
    Row(
        name="hypercorn-hello",
        description="bare ASGI hello app on hypercorn + uvloop, 1 process (hypercorn's ceiling)",
        tools=(),
        needs_backend=False,
        start=_hypercorn_hello,
    ),
    Row(
        name="naive-proxy",
        description="hypercorn + aiohttp client, the obvious 40-line proxy (for reference)",
        tools=("nginx",),
        needs_backend=True,
        start=_naive_proxy,
    ),
    Row(
        name="shoal-gateway",
        description="Shoal's gateway in front of the backend",
        tools=("nginx",),
        needs_backend=True,
        start=_shoal_gateway,
    ),
    Row(
        name="shoal-gateway-logged",
        description="the same gateway writing its JSON access log to a file (its cost)",
        tools=("nginx",),
        needs_backend=True,
        start=_shoal_gateway_logged,
    ),
    Row(
        name="shoal-mesh",
        description="Shoal's gateway → mTLS → node router → backend (the path to an instance)",
        tools=("nginx",),
        needs_backend=True,
        start=_shoal_mesh,
    ),
    Row(
        name="shoal-router",
        description="a client with a mesh certificate → mTLS → Shoal's node router → backend",
        tools=("nginx", "haproxy"),
        needs_backend=True,
        start=_shoal_router,
    ),
)

ROW_NAMES: tuple[str, ...] = tuple(row.name for row in ROWS)
REFERENCE_ROWS: tuple[str, ...] = (
    "nginx-proxy",
    "hypercorn-hello",
    "naive-proxy",
    "direct",
    "shoal-gateway",  # (for shoal-gateway-logged: what its access log costs)
)
COMPARED_ROWS: tuple[str, ...] = (
    "shoal-gateway",
    "shoal-gateway-logged",
    "shoal-mesh",
    "shoal-router",
)
