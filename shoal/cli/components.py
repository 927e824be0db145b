"""Commands that run Shoal's processes: ``up`` (all of them on one host), ``node``,
``gateway``, ``controller``."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from shoal.errors import PlatformError, ShoalError, UserError
from shoal.http.limits import parse_limits
from shoal.identity.join_token import parse
from shoal.platform import settings
from shoal.platform.runtime.isolation import DEFAULT_RANGE, parse_range
from shoal.resources.manifest import load_files
from shoal.store.connection import redacted

if TYPE_CHECKING:
    from shoal.gateway.server import GatewaySettings

from shoal.cli.common import (
    EXAMPLE_DIR,
    AccessLogFormatOpt,
    AccessLogOpt,
    AccessLogSampleOpt,
    ActivationOpt,
    EscapedSlashesOpt,
    InstanceUidsOpt,
    JoinTokenOpt,
    LimitOpt,
    MetricsPortOpt,
    OtlpOpt,
    RedisOpt,
    TrustedHopsOpt,
    UnderscoreHeadersOpt,
    access_log_spec,
    app,
    fail,
    line_format,
    run_component,
    with_store,
)
from shoal.cli.security import new_join_token

GATEWAY_START_TIMEOUT = 30.0  # seconds shoal up waits for the gateway to listen
PREVIOUS_STOP_TIMEOUT = 60.0  # seconds shoal up waits for a killed one's processes to stop
DASHBOARD_PORT = 15100  # clear of Istio's 15000-15090


def gateway_settings(
    *,
    limit: list[str] | None,
    trusted_hops: str | None,
    escaped_slashes: str | None,
    underscore_headers: str | None = None,
    listen: GatewaySettings | None = None,
) -> GatewaySettings:
    """``listen`` (where the gateway listens, with which certificate) plus the edge flags; a
    bad flag is a ``UserError`` naming it. ``up`` calls it too, to refuse a bad flag before it
    starts anything.
    """
    from shoal.gateway.server import GatewaySettings
    from shoal.http.headers import UnderscorePolicy
    from shoal.http.paths import SlashPolicy

    hops = trusted_hops.strip() if trusted_hops is not None else "0"
    if not re.fullmatch(r"[0-9]+", hops, re.ASCII):
        raise UserError(f"--trusted-hops {trusted_hops!r}: expected a whole number >= 0, e.g. 1")
    return dataclasses.replace(
        listen or GatewaySettings(),
        limits=parse_limits(limit or []),
        trusted_hops=int(hops),
        escaped_slashes=_choice(SlashPolicy, escaped_slashes, "--escaped-slashes", "reject"),
        underscore_headers=_choice(
            UnderscorePolicy, underscore_headers, "--underscore-headers", "drop"
        ),
    )


E = TypeVar("E", bound=enum.Enum)


def _choice(kind: type[E], flag: str | None, name: str, default: str) -> E:
    """The member of ``kind`` a flag names (by value, any case); UserError naming the flag."""
    value = flag.strip().lower() if flag is not None else default
    for member in kind:
        if member.value == value:
            return member
    names = ", ".join(str(m.value) for m in kind)
    raise UserError(f"{name} {flag!r}: use one of {names}")


def read_join_token(flag: str | None) -> str | None:
    """The join token (``--join-token @FILE`` or ``$SHOAL_JOIN_TOKEN``), with
    ``$SHOAL_JOIN_TOKEN`` removed from the environment so that no process this one starts sees
    it; errors become one line."""
    try:
        token = settings.join_token(flag)
        if token is not None:
            parse(token)  # a malformed one is said here, not by the CA on every retry
        return token
    except ShoalError as e:
        raise fail(e) from None
    finally:
        os.environ.pop("SHOAL_JOIN_TOKEN", None)


@app.command(short_help="Start the platform on this host (Ctrl-C stops it).")
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
    underscore_headers: UnderscoreHeadersOpt = None,
    activation_timeout: ActivationOpt = 30.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Admin ports (Prometheus /metrics, /healthz, /readyz): the gateway on this "
            "port, the node on the next, the controller on the one after (127.0.0.1; 0: off)."
        ),
    ] = 15090,
    gateway_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Gateway processes sharing its ports (SO_REUSEPORT); default: one per core.",
        ),
    ] = None,
    dashboard_port: Annotated[
        int, typer.Option(help="The dashboard on 127.0.0.1 at this port (0: none).")
    ] = DASHBOARD_PORT,
    instance_uids: InstanceUidsOpt = DEFAULT_RANGE,
    access_log: AccessLogOpt = None,
    access_log_sample: AccessLogSampleOpt = 1.0,
    otlp_endpoint: OtlpOpt = None,
    access_log_format: AccessLogFormatOpt = "json",
) -> None:
    """Start the platform on this host: Redis (embedded unless --redis), controller, node,
    gateway. Ctrl-C stops everything cleanly.

    Example: shoal up --example
    """
    from shoal.platform.supervisor import (
        Supervisor,
        check_ports,
        forget_up,
        record_up,
        running_up,
        wait_listening,
        wait_previous,
    )

    # The gateway child parses these flags again; checked here so that a bad one stops
    # 'shoal up' before it starts anything rather than ending up in the gateway's log.
    try:
        gateway_settings(
            limit=limit,
            trusted_hops=trusted_hops,
            escaped_slashes=escaped_slashes,
            underscore_headers=underscore_headers,
        )
        parse_range(instance_uids)
    except ShoalError as e:
        raise fail(e) from None
    state = settings.state_dir()
    # Its owner's alone (logs, the CA's key, the store's password): as the embedded Redis
    # leaves it, also when the store is elsewhere.
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    activation = ["--activation-timeout", str(activation_timeout)]
    gateway_args = ["--port", str(port), *activation, "--metrics-port", str(metrics_port)]
    if gateway_workers is not None:
        gateway_args += ["--workers", str(gateway_workers)]
    # Flags the gateway and the node both take.
    shared_args = [arg for pair in limit or [] for arg in ("--limit", pair)]
    logging_args = ["--access-log-sample", str(access_log_sample)]
    logging_args += ["--access-log-format", line_format(access_log_format)]
    if access_log is not None:
        logging_args += ["--access-log", access_log]
    if otlp_endpoint:
        logging_args += ["--otlp-endpoint", otlp_endpoint]
    shared_args += logging_args
    gateway_args += shared_args
    if trusted_hops is not None:
        gateway_args += ["--trusted-hops", trusted_hops]
    if escaped_slashes is not None:
        gateway_args += ["--escaped-slashes", escaped_slashes]
    if underscore_headers is not None:
        gateway_args += ["--underscore-headers", underscore_headers]
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
    node_args = [
        "--mesh-port",
        str(mesh_port),
        *activation,
        "--metrics-port",
        str(metrics_port + 1 if metrics_port else 0),
        *shared_args,
        "--instance-uids",
        instance_uids,
    ]
    ports = {"gateway": ("0.0.0.0", port), "mesh": ("127.0.0.1", mesh_port)}
    if metrics_port:
        ports["gateway metrics"] = ("127.0.0.1", metrics_port)
        ports["node metrics"] = ("127.0.0.1", metrics_port + 1)
        ports["controller metrics"] = ("127.0.0.1", metrics_port + 2)
    if tls_port is not None:
        ports["gateway TLS"] = ("0.0.0.0", tls_port)
    controller_args = ["--metrics-port", str(metrics_port + 2 if metrics_port else 0)]
    components = {"controller": controller_args, "node": node_args, "gateway": gateway_args}
    if dashboard_port:
        ports["dashboard"] = ("127.0.0.1", dashboard_port)
        components["dashboard"] = ["--port", str(dashboard_port)]
    try:
        other = running_up(state)
        if other is not None:
            raise PlatformError(
                f"'shoal up' already runs for {state} (pid {other}): 'shoal down' stops it"
            )
        if record_up(state):
            typer.echo("a previous 'shoal up' was killed: waiting for its processes to stop")
            wait_previous(state, ports, PREVIOUS_STOP_TIMEOUT)
        check_ports(ports)
        store = settings.store_flag(redis)
    except ShoalError as e:
        forget_up(state)
        raise fail(e) from None
    sup = Supervisor(
        state_dir=state,
        redis_url=store,
        component_args=components,
        env={**os.environ, "SHOAL_HOME": str(state)},
        on_store=lambda url: {"SHOAL_JOIN_TOKEN": new_join_token(url, uses=2)},
        prefix=settings.key_prefix(),
    )
    # The handler only appends to a list: setting a threading.Event from a signal handler can
    # deadlock on the Event's lock when the signal lands while the main thread holds it.
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    cli = cli_command()
    try:
        url = sup.start()
        (state / "gateway.url").write_text(f"http://127.0.0.1:{port}\n")
        typer.echo(f"store      {redacted(url)}  (state in {state})")
        # The gateway listens once it holds its mesh certificate (the controller signs it).
        if not wait_listening(port, GATEWAY_START_TIMEOUT, lambda: bool(stopping)):
            typer.echo(
                f"gateway    not listening yet after {GATEWAY_START_TIMEOUT:g}s: see the logs"
            )
        typer.echo(f"gateway    http://localhost:{port}  (on 0.0.0.0:{port}: HTTP/1.1 and h2c)")
        if tls_port is not None:
            typer.echo(
                f"           https://localhost:{tls_port}  (on 0.0.0.0:{tls_port}: TLS, "
                "ALPN h2 and http/1.1)"
            )
        typer.echo(f"mesh       127.0.0.1:{mesh_port}  (the node router's mTLS port)")
        if metrics_port:
            typer.echo(
                f"metrics    http://127.0.0.1:{metrics_port}/metrics (gateway), "
                f":{metrics_port + 1} (node), :{metrics_port + 2} (controller); "
                "/healthz, /readyz"
            )
        if dashboard_port:
            typer.echo(
                f"dashboard  http://127.0.0.1:{dashboard_port}/  ({cli} top: the same in here)"
            )
        typer.echo(f"logs       {state / 'logs'}  ({cli} logs SERVICE: an instance's output)")
        if example:
            resources = load_files(sorted(str(p) for p in EXAMPLE_DIR.glob("*.yaml")))
            applied = with_store(url, lambda c: c.apply(resources, keep_existing=True))
            typer.echo(
                f"example    {len(applied.changed)} resources applied, "
                f"{len(applied.unchanged)} already there (revision {applied.revision})"
            )
            typer.echo(
                f"try        curl --http2-prior-knowledge -H 'Host: hello' localhost:{port}/"
            )
            typer.echo(f"           curl -H 'Host: world' localhost:{port}/")
            typer.echo(f"           curl -H 'Host: hello' localhost:{port}/chain")
        typer.echo(f"status     {cli} status      (Ctrl-C or '{cli} down' stops everything)")
        watcher = threading.Thread(target=sup.watch, args=(typer.echo,), daemon=True)
        watcher.start()
        while not stopping:
            time.sleep(0.2)
        typer.echo("stopping: draining instances…")
    except ShoalError as e:
        raise fail(e) from None
    finally:
        sup.stop()
        forget_up(state)
    typer.echo("stopped")


def cli_command() -> str:
    """How the user runs this ``shoal``: ``shoal`` when PATH finds it, else its path (relative
    to the working directory when inside it, as ``.venv/bin/shoal``)."""
    mine = Path(sys.executable).parent / "shoal"
    found = shutil.which("shoal")
    if found is not None and Path(found).resolve() == mine.resolve():
        return "shoal"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


@app.command(short_help="Stop the 'shoal up' running for $SHOAL_HOME.")
def down(
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="How long to wait for everything to stop.")
    ] = 90.0,
) -> None:
    """Stop the 'shoal up' running for $SHOAL_HOME, as Ctrl-C does (instances drain), and wait
    until everything it started has stopped.

    Example: shoal down
    """
    from shoal.platform.supervisor import running_up, wait_stopped

    state = settings.state_dir()
    pid = running_up(state)
    if pid is None:
        typer.echo(f"nothing to stop: no 'shoal up' runs for {state}")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise fail(PlatformError(f"'shoal up' (pid {pid}) belongs to another user")) from None
    typer.echo(f"stopping 'shoal up' (pid {pid}): draining instances…")
    if not wait_stopped(pid, timeout):
        raise fail(
            PlatformError(
                f"'shoal up' (pid {pid}) still runs after {timeout:g}s: see {state / 'logs'}"
            )
        )
    typer.echo("stopped")


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
    limit: Annotated[
        list[str] | None,
        typer.Option(
            "--limit",
            metavar="NAME=VALUE",
            help="The gateway's edge limits (same flags): the router admits any request head "
            "the gateway admits. E.g. --limit max_header_bytes=120KiB",
        ),
    ] = None,
    instance_uids: InstanceUidsOpt = DEFAULT_RANGE,
    access_log: AccessLogOpt = None,
    access_log_sample: AccessLogSampleOpt = 1.0,
    otlp_endpoint: OtlpOpt = None,
    access_log_format: AccessLogFormatOpt = "json",
) -> None:
    """Run a node (router + agent) on this host.

    Example: shoal node --redis redis://10.0.0.5:6379 --host 0.0.0.0 --advertise 10.0.0.7
    Example: shoal node --label zone=eu-1 --capacity 20
    """
    from shoal.platform.node import node_capacity, node_labels, run_node
    from shoal.platform.runtime.agent import default_node_id

    try:
        labels, most = node_labels(label or []), node_capacity(capacity)
        limits = parse_limits(limit or [])
        uids = parse_range(instance_uids)
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
        join_token=read_join_token(join_token),
        metrics_port=metrics_port or None,
        labels=labels,
        capacity=most,
        limits=limits,
        instance_uids=uids,
        access_log=access_log_spec(access_log, "node"),
        access_log_sample=access_log_sample,
        otlp_endpoint=otlp_endpoint,
        access_log_format=line_format(access_log_format),
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
    underscore_headers: UnderscoreHeadersOpt = None,
    activation_timeout: ActivationOpt = 30.0,
    join_token: JoinTokenOpt = None,
    metrics_port: MetricsPortOpt = 15090,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Gateway processes sharing the ports (SO_REUSEPORT); default: one per core. "
            "The first serves /metrics for all.",
        ),
    ] = None,
    identity_wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to wait for the gateway's mesh certificate before listening "
            "(0: at once; without one, requests for mesh instances get 503).",
        ),
    ] = 10.0,
    access_log: AccessLogOpt = None,
    access_log_sample: AccessLogSampleOpt = 1.0,
    otlp_endpoint: OtlpOpt = None,
    access_log_format: AccessLogFormatOpt = "json",
    worker: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the HTTP gateway.

    Example: shoal gateway --port 8080 --tls-port 8443 --cert edge.pem --key edge.key
    Example: shoal gateway --limit max_body_bytes=1MiB --trusted-hops 1 --escaped-slashes keep
    Example: shoal gateway --workers 2
    """
    from shoal.gateway.server import GatewaySettings, run_gateway
    from shoal.gateway.workers import component, default_workers, run_workers

    if (tls_port is None) != (cert is None) or (cert is None) != (key is None):
        raise fail(UserError("--tls-port, --cert and --key go together"))
    if workers is None:
        workers = default_workers()
    try:
        gs = gateway_settings(
            limit=limit,
            trusted_hops=trusted_hops,
            escaped_slashes=escaped_slashes,
            underscore_headers=underscore_headers,
            listen=GatewaySettings(
                host=host,
                port=port,
                tls_port=tls_port if cert else None,
                certfile=cert,
                keyfile=key,
                activation_timeout=activation_timeout,
                metrics_port=(metrics_port or None) if not worker else None,
                reuse_port=workers > 1,
                identity_wait=identity_wait,
                access_log=access_log_spec(access_log, "gateway"),
                access_log_sample=access_log_sample,
                otlp_endpoint=otlp_endpoint,
                access_log_format=line_format(access_log_format),
            ),
        )
    except ShoalError as e:
        raise fail(e) from None
    if workers > 1 and worker is None:  # flags checked: each worker parses them again
        from shoal.platform.supervisor import check_ports

        ports = {"gateway": (host, port)}
        if tls_port is not None:
            ports["gateway TLS"] = (host, tls_port)
        try:  # what every worker would fail on, said once
            settings.redis_url(redis)
            check_ports(ports)
        except ShoalError as e:
            raise fail(e) from None
        raise typer.Exit(run_workers(workers, sys.argv[1:]))
    run_component(
        run_gateway,
        redis,
        component(worker),
        component=component(worker),
        settings=gs,
        trust_domain=settings.trust_domain(),
        join_token=read_join_token(join_token),
    )


@app.command(short_help="Serve the live dashboard (read-only) in a browser.")
def dashboard(
    redis: RedisOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this host only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DASHBOARD_PORT,
) -> None:
    """Serve the dashboard: the mesh's services, revisions with their traffic shares and
    instances on nodes, requests/s, errors and latency, events and certificate expiries,
    updated every second. Read-only; it shows no secret.

    Example: shoal dashboard --port 15100
    """
    from shoal.platform.dashboard.server import run_dashboard

    run_component(run_dashboard, redis, "dashboard", host=host, port=port)


@app.command(short_help="Run a controller: CA, scheduler, autoscaler.")
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
    keep_retired: Annotated[
        int,
        typer.Option(
            help="Retired revisions kept per service (no VirtualService) before older ones "
            "are deleted."
        ),
    ] = 20,
    delete_retired_after: Annotated[
        float,
        typer.Option(help="Seconds a retired revision beyond --keep-retired lives on."),
    ] = 48 * 3600.0,
    metrics_port: MetricsPortOpt = 15092,
) -> None:
    """Run a controller (one leads; others stand by): CA, scheduler, autoscaler.

    Example: shoal controller --redis redis://10.0.0.5:6379 --stable-window 30
    """
    from shoal.platform.control.controller import run_controller
    from shoal.platform.control.scaling import AutoscaleSettings

    try:
        autoscale = AutoscaleSettings(
            stable_window=stable_window,
            panic_window=panic_window,
            scale_to_zero_grace=scale_to_zero_grace,
            retire_after=retire_after,
            keep_retired=keep_retired,
            delete_retired_after=delete_retired_after,
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
        metrics_port=metrics_port or None,
    )
