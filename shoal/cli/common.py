"""What every ``shoal`` command shares: the Typer app, option types, one-line errors, the
store client, and how a long-running component is run."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import yaml

from shoal.errors import ShoalError, UserError
from shoal.http.limits import LIMIT_NAMES
from shoal.platform import settings
from shoal.platform.control.client import Client
from shoal.store.connection import connect
from shoal.store.keys import Keys

if TYPE_CHECKING:
    pass


app = typer.Typer(
    help="Shoal: a gateway and service mesh that runs your services.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        try:
            version = importlib.metadata.version("shoal")
        except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
            version = "(not installed)"
        typer.echo(f"shoal {version} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Shoal: a gateway and service mesh that runs your services."""


T = TypeVar("T")
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Store URL (redis://, rediss://, redis+sentinel://), or @FILE: a file (mode 0600) "
        "holding it. A URL with a password is refused here (ps shows command lines to every "
        "local user): give it as @FILE or $SHOAL_REDIS_URL. Default: $SHOAL_REDIS_URL, else "
        "the embedded Redis started by 'shoal up' in $SHOAL_HOME.",
    ),
]
OUTPUTS = ("table", "wide", "json", "yaml")


def _output(value: str) -> str:
    if value not in OUTPUTS:
        raise fail(UserError(f"-o {value!r}: use one of {', '.join(OUTPUTS)}"))
    return value


OutputOpt = Annotated[
    str,
    typer.Option(
        "-o",
        "--output",
        metavar="FORMAT",
        help="table, wide (more columns), json or yaml",
        callback=_output,
    ),
]


def show(data: Any, output: str, table: Callable[[], None]) -> None:
    """Print ``data`` as ``-o json`` or ``-o yaml``, else call ``table``."""
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        table()


def progress(output: str) -> Callable[[str], None]:
    """Where a command says how it is going: its output, or stderr when its output is a
    document (``-o json|yaml``), which then comes whole at the end."""
    document = output in ("json", "yaml")
    return lambda line: typer.echo(line, err=document)


def lines(*text: str) -> Callable[[], None]:
    """A table that is a few lines of text."""

    def echo() -> None:
        for line in text:
            typer.echo(line)

    return echo


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

UnderscoreHeadersOpt = Annotated[
    str | None,
    typer.Option(
        "--underscore-headers",
        metavar="drop|keep|reject",
        help="Header names with an underscore (X_Auth_User, read as X-Auth-User by CGI/WSGI "
        "apps): drop them (the default, as nginx does), keep them, or reject the request (400). "
        "E.g. --underscore-headers reject",
    ),
]
JoinTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--join-token",
        metavar="@FILE",
        help="A file (mode 0600) holding a token from 'shoal token create': needed for this "
        "process's first certificate. Default: $SHOAL_JOIN_TOKEN. Never the token itself: "
        "command lines are readable by every local user.",
    ),
]
InstanceUidsOpt = Annotated[
    str,
    typer.Option(
        "--instance-uids",
        metavar="FIRST-LAST|off",
        help="Each service's instances run as a uid of their own from this range (needs root; "
        "never a uid with an account), so they cannot read Shoal's state or borrow another "
        "service's identity. 'off': instances run as Shoal's own user.",
    ),
]
AccessLogOpt = Annotated[
    str | None,
    typer.Option(
        "--access-log",
        metavar="PATH|-|off",
        help="One JSON line per request: a file (default: $SHOAL_HOME/logs/access-<component>"
        ".log, cut at 10 MiB), - for standard output, or off.",
    ),
]
AccessLogFormatOpt = Annotated[
    str,
    typer.Option(
        "--access-log-format",
        metavar="json|text",
        help="Access-log lines as JSON objects, or as text (space-separated, for grep).",
    ),
]


def line_format(value: str) -> str:
    """``--access-log-format``'s value, checked (exit 2 with one line otherwise)."""
    from shoal.mesh.access_log import FORMATS

    if value not in FORMATS:
        choices = " or ".join(FORMATS)
        raise fail(UserError(f"--access-log-format must be {choices} (got {value!r})"))
    return value


OtlpOpt = Annotated[
    str | None,
    typer.Option(
        "--otlp-endpoint",
        metavar="URL",
        envvar="SHOAL_OTLP_ENDPOINT",
        help="Export each logged request's span over OTLP/HTTP to this collector "
        "(e.g. http://127.0.0.1:4318; spans go to <URL>/v1/traces).",
    ),
]
AccessLogSampleOpt = Annotated[
    float,
    typer.Option(
        "--access-log-sample",
        min=0.0,
        max=1.0,
        metavar="SHARE",
        help="The share of requests logged, chosen by trace id (every hop logs the same ones).",
    ),
]


def access_log_spec(flag: str | None, component: str) -> str:
    """Where ``--access-log`` sends ``component``'s lines (its default file when not given)."""
    return flag if flag else str(settings.state_dir() / "logs" / f"access-{component}.log")


MetricsPortOpt = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        help="Admin port on 127.0.0.1: Prometheus /metrics, /healthz, /readyz (0: off).",
    ),
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
    """Connect to the store ``--redis`` names (or the default one), run ``fn`` with a client,
    close; errors become one line."""
    try:
        url = settings.redis_url(redis_flag)
    except ShoalError as e:
        raise fail(e) from None
    return with_store(url, fn)


def with_store(url: str, fn: Callable[[Client], Awaitable[T]]) -> T:
    """As :func:`with_client`, for a store URL already known."""

    async def go() -> T:
        redis = connect(url)
        try:
            return await fn(Client(redis, Keys(settings.key_prefix())))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except ShoalError as e:
        raise fail(e) from None


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
