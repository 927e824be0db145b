"""The ``shoal`` command. Thin: parse flags, call one function, render.

Errors are one line on stderr and a non-zero exit code (the ``ShoalError`` tree's), never a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import yaml

from shoal.cli import render
from shoal.errors import ShoalError, UserError
from shoal.gateway.limits import LIMIT_NAMES, parse_limits
from shoal.platform import settings
from shoal.platform.client import Client
from shoal.platform.drill import Report
from shoal.platform.resources import load_files
from shoal.platform.rollout import RollBack
from shoal.store.connection import connect, redacted
from shoal.store.keys import Keys

if TYPE_CHECKING:
    from shoal.gateway.server import GatewaySettings

app = typer.Typer(
    help="Shoal: a gateway and service mesh that runs your services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Store URL (redis://, rediss://, redis+sentinel://). Default: $SHOAL_REDIS_URL, "
        "else the embedded Redis started by 'shoal up' in $SHOAL_HOME.",
    ),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", help="table, json or yaml")]
# The gateway's edge settings, taken as text and parsed by gateway_settings() so that a bad
# value is one ``error:`` line like every other Shoal error.
LimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        metavar="NAME=VALUE",
        help="An edge limit, repeatable: sizes in bytes or KiB/MiB/GiB, times in seconds "
        "(read_timeout=off disables it), h2_* flood budgets as BURST/RATE. "
        "E.g. --limit max_body_bytes=1MiB --limit header_timeout=5s --limit h2_reset=200/50. "
        f"Names: {', '.join(LIMIT_NAMES)}.",
    ),
]
TrustedHopsOpt = Annotated[
    str | None,
    typer.Option(
        "--trusted-hops",
        metavar="N",
        help="Proxies in front of the gateway whose X-Forwarded-For/Forwarded entries are kept "
        "(default 0: the client's are replaced). E.g. --trusted-hops 1 behind one load balancer.",
    ),
]
EscapedSlashesOpt = Annotated[
    str | None,
    typer.Option(
        "--escaped-slashes",
        metavar="reject|keep|decode",
        help="%2F, %5C and backslashes in paths: reject (400, the default), keep them encoded, "
        "or decode them to /. E.g. --escaped-slashes keep",
    ),
]

JoinTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--join-token",
        envvar="SHOAL_JOIN_TOKEN",
        help="Token from 'shoal token create': needed for this process's first certificate.",
    ),
]
MetricsPortOpt = Annotated[
    int,
    typer.Option("--metrics-port", help="Prometheus /metrics on 127.0.0.1 at this port (0: off)."),
]
ActivationOpt = Annotated[
    float,
    typer.Option(
        "--activation-timeout",
        help="Seconds a request for a service with no ready instance (scaled to zero) waits "
        "for one to start before 503 cold_start_timeout.",
    ),
]

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "hello-world"


def fail(e: ShoalError) -> typer.Exit:
    """Print one line for ``e`` and give the exit to raise."""
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(e.exit_code)


def with_client(redis_flag: str | None, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to the store, run ``fn`` with a client, close; errors become one line."""

    async def go() -> T:
        url = settings.redis_url(redis_flag)
        redis = connect(url)
        try:
            return await fn(Client(redis, Keys(settings.key_prefix())))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except ShoalError as e:
        raise fail(e) from None


def gateway_settings(
    *,
    limit: list[str] | None,
    trusted_hops: str | None,
    escaped_slashes: str | None,
    listen: GatewaySettings | None = None,
) -> GatewaySettings:
    """``listen`` (where the gateway listens, with which certificate) plus the edge flags; a
    bad flag is a ``UserError`` naming it. ``up`` calls it too, to refuse a bad flag before it
    starts anything.
    """
    from shoal.gateway.paths import SlashPolicy
    from shoal.gateway.server import GatewaySettings

    policies = {p.value: p for p in SlashPolicy}
    slashes = escaped_slashes.strip().lower() if escaped_slashes is not None else "reject"
    if slashes not in policies:
        raise UserError(f"--escaped-slashes {escaped_slashes!r}: use reject, keep or decode")
    hops = trusted_hops.strip() if trusted_hops is not None else "0"
    if not re.fullmatch(r"[0-9]+", hops, re.ASCII):
        raise UserError(f"--trusted-hops {trusted_hops!r}: expected a whole number >= 0, e.g. 1")
    return dataclasses.replace(
        listen or GatewaySettings(),
        limits=parse_limits(limit or []),
        trusted_hops=int(hops),
        escaped_slashes=policies[slashes],
    )


def secret_from_env(value: str | None) -> str | None:
    """``value``, with ``$SHOAL_JOIN_TOKEN`` removed from the environment so that the
    instances this process starts never see it."""
    os.environ.pop("SHOAL_JOIN_TOKEN", None)
    return value


def run_component(
    coro: Callable[..., Coroutine[Any, Any, None]], redis_flag: str | None, name: str, **kwargs: Any
) -> None:
    """Run a long-lived component process until SIGTERM/SIGINT."""
    from shoal.platform.process import run_process, setup_logging

    setup_logging(name)
    try:
        url = settings.redis_url(redis_flag)
    except ShoalError as e:
        raise fail(e) from None

    async def main(redis: Any, url: str, keys: Keys, stop: asyncio.Event) -> None:
        await coro(redis, url, keys, stop=stop, **kwargs)

    try:
        run_process(main, url, Keys(settings.key_prefix()))
    except ShoalError as e:
        raise fail(e) from None


@app.command()
def up(
    example: Annotated[bool, typer.Option(help="Deploy the hello-world example.")] = False,
    redis: RedisOpt = None,
    port: Annotated[int, typer.Option(help="Gateway HTTP/1.1 + h2c port.")] = 8080,
    mesh_port: Annotated[
        int, typer.Option(help="Node router's inbound mTLS port.")
    ] = settings.DEFAULT_MESH_PORT,
    tls_port: Annotated[
        int | None, typer.Option(help="Gateway TLS port (needs --cert/--key).")
    ] = None,
    cert: Annotated[str | None, typer.Option(help="PEM certificate chain for the gateway.")] = None,
    key: Annotated[str | None, typer.Option(help="PEM private key for the gateway.")] = None,
    limit: LimitOpt = None,
    trusted_hops: TrustedHopsOpt = None,
    escaped_slashes: EscapedSlashesOpt = None,
    activation_timeout: ActivationOpt = 30.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Prometheus /metrics: the gateway on this port, the node on the next "
            "(127.0.0.1; 0: off)."
        ),
    ] = 15090,
) -> None:
    """Start the platform on this host: Redis (embedded unless --redis), controller, node,
    gateway. Ctrl-C stops everything cleanly.

    Example: shoal up --example
    """
    from shoal.platform.supervisor import Supervisor, check_ports

    # The gateway child parses these flags again; checked here so that a bad one stops
    # 'shoal up' before it starts anything rather than ending up in the gateway's log.
    try:
        gateway_settings(limit=limit, trusted_hops=trusted_hops, escaped_slashes=escaped_slashes)
    except ShoalError as e:
        raise fail(e) from None
    state = settings.state_dir()
    activation = ["--activation-timeout", str(activation_timeout)]
    gateway_args = ["--port", str(port), *activation, "--metrics-port", str(metrics_port)]
    for pair in limit or []:
        gateway_args += ["--limit", pair]
    if trusted_hops is not None:
        gateway_args += ["--trusted-hops", trusted_hops]
    if escaped_slashes is not None:
        gateway_args += ["--escaped-slashes", escaped_slashes]
    if tls_port is not None or cert is not None or key is not None:
        if tls_port is None or cert is None or key is None:
            raise fail(UserError("--tls-port, --cert and --key go together"))
        gateway_args += [
            "--tls-port",
            str(tls_port),
            "--cert",
            str(Path(cert).absolute()),
            "--key",
            str(Path(key).absolute()),
        ]
    ports = {"gateway": ("0.0.0.0", port), "mesh": ("127.0.0.1", mesh_port)}
    if metrics_port:
        ports["gateway metrics"] = ("127.0.0.1", metrics_port)
        ports["node metrics"] = ("127.0.0.1", metrics_port + 1)
    if tls_port is not None:
        ports["gateway TLS"] = ("0.0.0.0", tls_port)
    try:
        check_ports(ports)
    except ShoalError as e:
        raise fail(e) from None
    sup = Supervisor(
        state_dir=state,
        redis_url=redis,
        component_args={
            "controller": [],
            "node": [
                "--mesh-port",
                str(mesh_port),
                *activation,
                "--metrics-port",
                str(metrics_port + 1 if metrics_port else 0),
            ],
            "gateway": gateway_args,
        },
        env={**os.environ, "SHOAL_HOME": str(state)},
        on_store=lambda url: {"SHOAL_JOIN_TOKEN": new_join_token(url, uses=2)},
    )
    # The handler only appends to a list: setting a threading.Event from a signal handler can
    # deadlock on the Event's lock when the signal lands while the main thread holds it.
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    try:
        url = sup.start()
        (state / "gateway.url").write_text(f"http://127.0.0.1:{port}\n")
        typer.echo(f"store      {redacted(url)}  (state in {state})")
        typer.echo(f"gateway    http://localhost:{port}  (HTTP/1.1 and h2c)")
        if tls_port is not None:
            typer.echo(f"           https://localhost:{tls_port}  (TLS, ALPN h2 and http/1.1)")
        typer.echo(f"logs       {state / 'logs'}")
        if example:
            resources = load_files(sorted(str(p) for p in EXAMPLE_DIR.glob("*.yaml")))
            applied = with_client(url, lambda c: c.apply(resources, keep_existing=True))
            typer.echo(
                f"example    {len(applied.changed)} resources applied, "
                f"{len(applied.unchanged)} already there (revision {applied.revision})"
            )
            typer.echo(
                f"try        curl --http2-prior-knowledge -H 'Host: hello' localhost:{port}/"
            )
            typer.echo(f"           curl -H 'Host: world' localhost:{port}/")
            typer.echo(f"           curl -H 'Host: hello' localhost:{port}/chain")
        typer.echo("status     shoal status      (Ctrl-C stops everything)")
        watcher = threading.Thread(target=sup.watch, args=(typer.echo,), daemon=True)
        watcher.start()
        while not stopping:
            time.sleep(0.2)
        typer.echo("stopping: draining instances…")
    except ShoalError as e:
        sup.stop()
        raise fail(e) from None
    except typer.Exit:
        sup.stop()
        raise
    sup.stop()
    typer.echo("stopped")


def new_join_token(url: str, *, ttl: float = 3600.0, uses: int = 1) -> str:
    """A join token made in the store at ``url``."""
    from shoal.platform.tokens import JoinTokens

    return with_client(url, lambda c: JoinTokens(c.redis, c.keys).create(ttl=ttl, uses=uses))


token_app = typer.Typer(help="Join tokens for new nodes and gateways.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    redis: RedisOpt = None,
    ttl: Annotated[str, typer.Option(help="How long the token is valid.")] = "1h",
    uses: Annotated[int, typer.Option(help="How many components it may admit.")] = 1,
) -> None:
    """Make a join token: a node or gateway started with it (--join-token or
    $SHOAL_JOIN_TOKEN) gets its first certificate; without one it gets none.

    Example: shoal node --redis redis://10.0.0.5:6379 --join-token $(shoal token create)
    """
    from shoal.platform.rollout import parse_interval

    try:
        seconds = parse_interval(ttl, "--ttl")
        url = settings.redis_url(redis)
    except ShoalError as e:
        raise fail(e) from None
    typer.echo(new_join_token(url, ttl=seconds, uses=uses))


@app.command()
def node(
    redis: RedisOpt = None,
    node_id: Annotated[str | None, typer.Option(help="Node id (default: host name).")] = None,
    mesh_port: Annotated[
        int, typer.Option(help="Router's inbound mTLS port.")
    ] = settings.DEFAULT_MESH_PORT,
    host: Annotated[
        str, typer.Option(help="Address the router's inbound mTLS listener binds.")
    ] = "127.0.0.1",
    advertise: Annotated[
        str | None,
        typer.Option(help="Address other hosts reach this node's router at (default: --host)."),
    ] = None,
    activation_timeout: ActivationOpt = 30.0,
    join_token: JoinTokenOpt = None,
    metrics_port: MetricsPortOpt = 15091,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            metavar="KEY=VALUE",
            help="A node label, repeatable, matched by a Service's spec.node_selector. "
            "E.g. --label zone=eu-1 --label disk=ssd",
        ),
    ] = None,
    capacity: Annotated[
        str | None,
        typer.Option(
            "--capacity",
            metavar="N",
            help="The most instances (of all services) this node runs (default: no limit).",
        ),
    ] = None,
) -> None:
    """Run a node (router + agent) on this host.

    Example: shoal node --redis redis://10.0.0.5:6379 --host 0.0.0.0 --advertise 10.0.0.7
    Example: shoal node --label zone=eu-1 --capacity 20
    """
    from shoal.platform.agent import default_node_id
    from shoal.platform.node import node_capacity, node_labels, run_node

    try:
        labels, most = node_labels(label or []), node_capacity(capacity)
    except ShoalError as e:
        raise fail(e) from None
    run_component(
        run_node,
        redis,
        "node",
        node_id=node_id or default_node_id(),
        state_dir=settings.state_dir(),
        trust_domain=settings.trust_domain(),
        host=host,
        advertise=advertise,
        mesh_port=mesh_port,
        activation_timeout=activation_timeout,
        join_token=secret_from_env(join_token),
        metrics_port=metrics_port or None,
        labels=labels,
        capacity=most,
    )


@app.command()
def gateway(
    redis: RedisOpt = None,
    port: Annotated[int, typer.Option(help="HTTP/1.1 + h2c port.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    tls_port: Annotated[int | None, typer.Option(help="TLS port (needs --cert/--key).")] = None,
    cert: Annotated[str | None, typer.Option(help="PEM certificate chain.")] = None,
    key: Annotated[str | None, typer.Option(help="PEM private key.")] = None,
    limit: LimitOpt = None,
    trusted_hops: TrustedHopsOpt = None,
    escaped_slashes: EscapedSlashesOpt = None,
    activation_timeout: ActivationOpt = 30.0,
    join_token: JoinTokenOpt = None,
    metrics_port: MetricsPortOpt = 15090,
) -> None:
    """Run the HTTP gateway.

    Example: shoal gateway --port 8080 --tls-port 8443 --cert edge.pem --key edge.key
    Example: shoal gateway --limit max_body_bytes=1MiB --trusted-hops 1 --escaped-slashes keep
    """
    from shoal.gateway.server import GatewaySettings, run_gateway

    if (tls_port is None) != (cert is None) or (cert is None) != (key is None):
        raise fail(UserError("--tls-port, --cert and --key go together"))
    try:
        gs = gateway_settings(
            limit=limit,
            trusted_hops=trusted_hops,
            escaped_slashes=escaped_slashes,
            listen=GatewaySettings(
                host=host,
                port=port,
                tls_port=tls_port if cert else None,
                certfile=cert,
                keyfile=key,
                activation_timeout=activation_timeout,
                metrics_port=metrics_port or None,
            ),
        )
    except ShoalError as e:
        raise fail(e) from None
    run_component(
        run_gateway,
        redis,
        "gateway",
        settings=gs,
        trust_domain=settings.trust_domain(),
        join_token=secret_from_env(join_token),
    )


@app.command()
def controller(
    redis: RedisOpt = None,
    stable_window: Annotated[
        float, typer.Option(help="Autoscaler stable window, seconds (Knative's stable-window).")
    ] = 60.0,
    panic_window: Annotated[
        float, typer.Option(help="Autoscaler panic window, seconds (10% of stable in Knative).")
    ] = 6.0,
    scale_to_zero_grace: Annotated[
        float, typer.Option(help="Seconds idle past idle_timeout before the last instance goes.")
    ] = 0.0,
    retire_after: Annotated[
        float,
        typer.Option(
            help="Seconds a revision with 0% of its traffic and no request keeps its "
            "instances before it is scaled to zero."
        ),
    ] = 300.0,
) -> None:
    """Run a controller (one leads; others stand by): CA, scheduler, autoscaler.

    Example: shoal controller --redis redis://10.0.0.5:6379 --stable-window 30
    """
    from shoal.platform.controller import run_controller
    from shoal.platform.scaling import AutoscaleSettings

    try:
        autoscale = AutoscaleSettings(
            stable_window=stable_window,
            panic_window=panic_window,
            scale_to_zero_grace=scale_to_zero_grace,
            retire_after=retire_after,
        )
    except ValueError as e:
        raise fail(UserError(str(e))) from None
    run_component(
        run_controller,
        redis,
        "controller",
        state_dir=settings.state_dir(),
        autoscale=autoscale,
        trust_domain=settings.trust_domain(),
    )


@app.command("deploy", help="Same as apply: a Service spec change is a new revision.")
@app.command()
def apply(
    file: Annotated[list[str], typer.Option("-f", "--file", help="Manifest file(s); - is stdin.")],
    redis: RedisOpt = None,
    wait: Annotated[bool, typer.Option(help="Wait until every proxy applied it.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 30.0,
) -> None:
    """Validate and apply manifests: all documents land together, or none do.

    Example: shoal apply -f deploy/examples/hello-world/hello.yaml
    """
    try:
        resources = load_files(file)
    except ShoalError as e:
        raise fail(e) from None

    async def go(c: Client) -> tuple[Any, dict[str, int]]:
        applied = await c.apply(resources)
        lagging = await c.wait_applied(applied.revision, timeout) if wait else {}
        return applied, lagging

    applied, lagging = with_client(redis, go)
    render.applied(applied)
    if lagging:
        raise fail(
            ShoalError(
                "not applied yet by: "
                + ", ".join(f"{c} (at {r})" for c, r in sorted(lagging.items()))
            )
        )


@app.command()
def get(
    kind: Annotated[str, typer.Argument(help="service, virtualservice (vs), destinationrule (dr)")],
    name: Annotated[str | None, typer.Argument()] = None,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Show stored resources; ``revisions SERVICE`` lists a service's revisions with their
    traffic share and instances.

    Example: shoal get vs hello -o yaml
    Example: shoal get revisions hello
    """
    if kind.lower() in ("revisions", "revision", "rev"):
        if name is None:
            raise fail(UserError("shoal get revisions SERVICE: name the service"))
        service = name
        emit(with_client(redis, lambda c: c.revisions(service)), output, render.revisions)
        return
    emit(with_client(redis, lambda c: c.get(kind, name)), output, render.documents)


def emit(
    rows: list[dict[str, Any]], output: str, table: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Print ``rows`` as ``-o json``, ``-o yaml`` (one document each) or a table."""
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump_all(rows, sort_keys=False).rstrip())
    else:
        table(rows)


@app.command()
def rollout(
    service: Annotated[str, typer.Argument()],
    to: Annotated[str, typer.Option("--to", help="Subset (revision) to move traffic to.")],
    steps: Annotated[
        str, typer.Option(help="Traffic shares, percent, ending at 100.")
    ] = "10,50,100",
    interval: Annotated[str, typer.Option(help="How long each step is watched.")] = "30s",
    max_error_rate: Annotated[
        str, typer.Option(help="Roll back above this share of 5xx answers.")
    ] = "1%",
    max_p99: Annotated[
        str | None, typer.Option(help="Roll back above this p99 latency, e.g. 500ms.")
    ] = None,
    scale_to: Annotated[int, typer.Option(help="Ready instances before the first step.")] = 1,
    redis: RedisOpt = None,
) -> None:
    """Move traffic to a new revision in steps, watching its error rate and (with --max-p99)
    latency; roll back by itself when it breaches a limit (exit 1).

    Example: shoal rollout hello --to v2 --steps 10,50,100 --interval 30s --max-error-rate 1%
    """
    from shoal.platform.rollout import parse_error_rate, parse_interval, parse_steps
    from shoal.platform.rollout_runner import start_rollout

    try:
        settings_ = {
            "steps": parse_steps(steps),
            "interval": parse_interval(interval),
            "max_error_rate": parse_error_rate(max_error_rate),
            "max_p99": None if max_p99 is None else parse_interval(max_p99, "--max-p99"),
            "scale_to": scale_to,
        }
    except ShoalError as e:
        raise fail(e) from None
    result = with_client(redis, lambda c: start_rollout(c, service, to, typer.echo, **settings_))
    if isinstance(result, RollBack):
        raise typer.Exit(1)


@app.command()
def delete(
    kind: Annotated[str, typer.Argument(help="service, virtualservice (vs), destinationrule (dr)")],
    name: Annotated[
        str,
        typer.Argument(
            help="Name (a Service name deletes all revisions; NAME/REVISION deletes one)."
        ),
    ],
    redis: RedisOpt = None,
) -> None:
    """Delete a resource.

    Example: shoal delete service world
    """
    revision = with_client(redis, lambda c: c.delete(kind, name))
    typer.echo(f"deleted {kind} {name} (revision {revision})")


@app.command()
def weights(
    service: Annotated[str, typer.Argument()],
    split: Annotated[list[str], typer.Argument(help="SUBSET=WEIGHT pairs summing to 100")],
    redis: RedisOpt = None,
) -> None:
    """Split a service's traffic between subsets (edits its VirtualService).

    Example: shoal weights hello v1=80 v2=20
    """
    vs, revision = with_client(redis, lambda c: c.weights(service, split))
    parts = ", ".join(f"{d.destination.subset}={d.weight}" for d in vs.http[-1].route)
    typer.echo(f"VirtualService {vs.name}: {service} → {parts} (revision {revision})")


@app.command()
def scale(
    service: Annotated[str, typer.Argument()],
    min: Annotated[
        int | None, typer.Option("--min", help="Fewest instances (0: scale to zero when idle).")
    ] = None,
    max: Annotated[int | None, typer.Option("--max", help="Most instances.")] = None,
    target: Annotated[
        int | None, typer.Option("--target", help="Target concurrent requests per instance.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Only this revision.")] = None,
    redis: RedisOpt = None,
) -> None:
    """Set a service's scaling bounds (every revision, or --revision), in place.

    Example: shoal scale hello --min 3 --max 10
    """
    scaled = with_client(
        redis, lambda c: c.scale(service, min=min, max=max, target=target, revision=revision)
    )
    for s in scaled:
        typer.echo(
            f"{s.key}: min {s.scale.min}, max {s.scale.max}, target {s.scale.target_concurrency}"
        )


@app.command()
def status(
    redis: RedisOpt = None,
    output: OutputOpt = "table",
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then print every instance change.")
    ] = False,
) -> None:
    """Nodes, services and instances with revision, node, address, pid and state.

    Example: shoal status --watch
    """
    st = with_client(redis, lambda c: c.status())
    if output == "json":
        typer.echo(json.dumps(render.status_dict(st), indent=2))
    else:
        render.status(st)
    if watch:
        url = redis or settings.redis_url(None)
        typer.echo("\nwatching instance changes (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            with_client(url, lambda c: c.follow(url, render.instance_change))


certs_app = typer.Typer(
    help="The mesh's certificates: who holds what, renewal and root rotation.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")


@certs_app.command("status")
def certs_status(redis: RedisOpt = None, output: OutputOpt = "table") -> None:
    """The trust bundle, and every component's identities, issuer, expiry and trust.

    Example: shoal certs status
    """
    from shoal.platform.certs_admin import certs_status as read_status

    st = with_client(redis, lambda c: read_status(c.redis, c.keys))
    if output == "json":
        typer.echo(json.dumps(render.certs_dict(st), indent=2))
    else:
        render.certs(st)


@certs_app.command("rotate")
def certs_rotate(
    redis: RedisOpt = None,
    root: Annotated[
        bool, typer.Option("--root", help="Make a new root and move the mesh to it.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh.")] = 120.0,
) -> None:
    """Renew every leaf certificate now, or (--root) rotate the root CA without dropping a
    request: trust old+new, re-issue every leaf from the new root, then retire the old one.

    Example: shoal certs rotate --root --dry-run
    """
    from shoal.platform.certs_admin import certs_status as read_status
    from shoal.platform.certs_admin import renew_leaves, rotate_root

    async def go(c: Client) -> None:
        if dry_run:
            render.rotation_plan(await read_status(c.redis, c.keys), root=root)
        elif root:
            await rotate_root(c.redis, c.keys, timeout, typer.echo)
        else:
            await renew_leaves(c.redis, c.keys, timeout, typer.echo)
            typer.echo("done: every component holds renewed certificates")

    with_client(redis, go)


@certs_app.command("issue")
def certs_issue(
    identity: Annotated[
        str, typer.Argument(help="SPIFFE ID, e.g. spiffe://cluster.local/svc/hello.")
    ],
    out: Annotated[str, typer.Option(help="Directory for cert.pem, key.pem, bundle.pem.")] = ".",
    hours: Annotated[float, typer.Option(help="Validity in hours.")] = 1.0,
) -> None:
    """Sign a mesh certificate with the CA on this host (the controller's state dir), for
    debugging with openssl/curl or for a workload outside Shoal.

    Example: shoal certs issue spiffe://cluster.local/gateway --out /tmp/mesh
    """
    from datetime import timedelta

    from shoal.platform.ca import CAFiles
    from shoal.platform.certs_admin import issue_local

    try:
        paths = issue_local(
            CAFiles(settings.state_dir() / "ca"),
            settings.trust_domain(),
            identity,
            timedelta(hours=hours),
            Path(out),
        )
    except ShoalError as e:
        raise fail(e) from None
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


drill_app = typer.Typer(
    help="Failover drills: prove that clients see no error.", no_args_is_help=True
)
app.add_typer(drill_app, name="drill")


def gateway_url(flag: str | None) -> str:
    """``--gateway``, else the gateway ``shoal up`` recorded, else localhost:8080."""
    if flag:
        return flag
    recorded = settings.state_dir() / "gateway.url"
    return recorded.read_text().strip() if recorded.exists() else "http://127.0.0.1:8080"


def finish_drill(report: Report, output: str, limit: float) -> None:
    """Print a drill's report; fail when its error rate is over the limit."""
    if output == "json":
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render.drill(report)
    if report.error_rate > limit:
        raise fail(
            ShoalError(f"error rate {report.error_rate:.2%} is above --max-error-rate {limit:.2%}")
        )


@drill_app.command("failover")
def drill_failover(
    service: Annotated[str, typer.Argument()],
    fault: Annotated[
        str,
        typer.Option(
            help="kill (SIGKILL), hang (SIGSTOP), error (answers 503) or slow (+0.5 s per answer)"
        ),
    ] = "kill",
    count: Annotated[int, typer.Option(help="How many instances to fault.")] = 1,
    duration: Annotated[str, typer.Option(help="Length of the drill.")] = "30s",
    rps: Annotated[float, typer.Option(help="Requests per second through the gateway.")] = 100,
    max_error_rate: Annotated[
        str, typer.Option(help="Fail (exit 1) above this, e.g. 0 or 1%.")
    ] = "0",
    gateway: Annotated[
        str | None, typer.Option(help="Gateway URL (default: the one 'shoal up' started).")
    ] = None,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Fault instances of a service under steady traffic and report what clients saw.

    Example: shoal drill failover hello --fault kill --duration 20s --rps 100
    """
    from shoal.platform.drill import failover
    from shoal.platform.faults import FAULTS
    from shoal.platform.rollout import parse_error_rate, parse_interval

    try:
        if fault not in FAULTS:
            raise UserError(f"--fault {fault!r}: use one of {', '.join(FAULTS)}")
        if count < 1 or rps <= 0:
            raise UserError("--count and --rps must be positive")
        seconds = parse_interval(duration, "--duration")
        limit = parse_error_rate(max_error_rate)
    except ShoalError as e:
        raise fail(e) from None
    report = with_client(
        redis,
        lambda c: failover(
            c,
            gateway=gateway_url(gateway),
            service=service,
            fault=fault,
            count=count,
            duration=seconds,
            rps=rps,
        ),
    )
    finish_drill(report, output, limit)


@drill_app.command("redis")
def drill_redis(
    service: Annotated[str, typer.Argument(help="Service to send traffic to.")],
    mode: Annotated[
        str,
        typer.Option(help="stop (SIGSTOP for --down) or kill (SIGKILL; 'shoal up' restarts it)"),
    ] = "stop",
    down: Annotated[str, typer.Option(help="How long the store stays stopped.")] = "30s",
    duration: Annotated[
        str, typer.Option(help="Length of the drill (at least --down + 5s).")
    ] = "40s",
    rps: Annotated[float, typer.Option(help="Requests per second through the gateway.")] = 100,
    max_error_rate: Annotated[str, typer.Option(help="Fail (exit 1) above this.")] = "0",
    gateway: Annotated[str | None, typer.Option(help="Gateway URL.")] = None,
    output: OutputOpt = "table",
) -> None:
    """Take the embedded store away under traffic; report errors and registry recovery.

    Example: shoal drill redis hello --mode stop --down 30s
    """
    from shoal.platform.drill import redis_outage
    from shoal.platform.rollout import parse_error_rate, parse_interval
    from shoal.store.embedded import recorded_pid

    try:
        if mode not in ("stop", "kill"):
            raise UserError(f"--mode {mode!r}: use stop or kill")
        seconds_down = parse_interval(down, "--down")
        seconds = parse_interval(duration, "--duration")
        limit = parse_error_rate(max_error_rate)
        pid = recorded_pid(settings.state_dir())
        if pid is None:
            raise UserError(
                f"no embedded Redis of 'shoal up' running under "
                f"{settings.state_dir()}: this drill needs it on this host"
            )
    except ShoalError as e:
        raise fail(e) from None
    report = with_client(
        None,
        lambda c: redis_outage(
            c,
            gateway=gateway_url(gateway),
            service=service,
            redis_pid=pid,
            mode=mode,
            down=seconds_down,
            duration=seconds,
            rps=rps,
        ),
    )
    finish_drill(report, output, limit)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
