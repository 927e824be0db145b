"""``shoal drill``: failover drills under traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.live import Live

from shoal.cli import render
from shoal.errors import ShoalError, UserError
from shoal.platform import settings
from shoal.platform.drills.drill import Report, Sample

if TYPE_CHECKING:
    pass

from shoal.cli.common import OutputOpt, RedisOpt, app, fail, progress, show, with_client

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


class DrillProgress:
    """What a drill prints while it runs: a line at each phase (on stderr when the report is a
    document) and, on a terminal, a live line with the requests and errors so far."""

    def __init__(self, output: str) -> None:
        self.say = progress(output)
        self.phase: str | None = None
        self.live: Live | None = None
        console = Console(stderr=True)
        if console.is_terminal:
            self.live = Live("", console=console, transient=True, refresh_per_second=4)

    def __enter__(self) -> DrillProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def __call__(self, phase: str, samples: list[Sample]) -> None:
        errors = sum(1 for s in samples if not 200 <= s.status < 400)
        line = f"{phase}: {len(samples)} requests, {errors} errors"
        if phase != self.phase:
            self.phase = phase
            if self.live is not None:
                self.live.console.print(line, highlight=False)
            else:
                self.say(line)
        if self.live is not None:
            self.live.update(line)


def finish_drill(report: Report, output: str, limit: float) -> None:
    """Print a drill's report; fail when its error rate is over the limit."""
    show(report.to_dict(), output, lambda: render.drill(report))
    if report.error_rate > limit:
        raise fail(
            ShoalError(f"error rate {report.error_rate:.2%} is above --max-error-rate {limit:.2%}")
        )


@drill_app.command("failover", short_help="Fault instances under traffic; report what clients saw.")
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
    grpc_method: Annotated[
        str,
        typer.Option(help="For a protocol: grpc service, the unary method the traffic calls."),
    ] = "/grpc.health.v1.Health/Check",
    instance: Annotated[
        list[str] | None,
        typer.Option(
            "--instance",
            metavar="ID",
            help="Fault this instance (repeatable; its id or key, as shoal status shows it) "
            "rather than those that served the most of the warm-up's traffic.",
        ),
    ] = None,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Fault instances of a service under steady traffic and report what clients saw (unary
    gRPC calls for a protocol: grpc service, GETs otherwise).

    Example: shoal drill failover hello --fault kill --duration 20s --rps 100
    """
    from shoal.platform.control.rollout import parse_error_rate, parse_interval
    from shoal.platform.drills.drill import failover
    from shoal.platform.runtime.faults import FAULTS

    try:
        if fault not in FAULTS:
            raise UserError(f"--fault {fault!r}: use one of {', '.join(FAULTS)}")
        if count < 1 or rps <= 0:
            raise UserError("--count and --rps must be positive")
        seconds = parse_interval(duration, "--duration")
        limit = parse_error_rate(max_error_rate)
    except ShoalError as e:
        raise fail(e) from None
    with DrillProgress(output) as told:
        report = with_client(
            redis,
            lambda c: failover(
                c,
                gateway=gateway_url(gateway),
                service=service,
                fault=fault,
                count=len(instance) if instance else count,
                duration=seconds,
                rps=rps,
                grpc_method=grpc_method,
                instances=instance or (),
                progress=told,
            ),
        )
    finish_drill(report, output, limit)


@drill_app.command("redis", short_help="Take the store away under traffic; report errors.")
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
    from shoal.platform.control.rollout import parse_error_rate, parse_interval
    from shoal.platform.drills.drill import redis_outage
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
    with DrillProgress(output) as told:
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
                progress=told,
            ),
        )
    finish_drill(report, output, limit)
