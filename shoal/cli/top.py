"""``shoal top``: the dashboard's numbers live in the terminal (rich), refreshed every second."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.cli.common import RedisOpt, app, with_client
from shoal.platform.control.client import Client

_NUMERIC = {"REQ/S", "ERR %", "P50 ≤", "P99 ≤", "TRAFFIC"}
_COLOURS = {"ok": "green", "starting": "yellow", "draining": "grey50", "ejected": "red"}


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def view(overview: dict[str, Any], events: int = 8) -> Group:
    """The overview as a services table, then the latest events."""
    table = Table(box=None, pad_edge=False, title_justify="left")
    table.title = (
        f"config revision {overview['revision']} · {len(overview['nodes'])} node(s) · "
        f"{len(overview['proxies'])} prox(ies) · {time.strftime('%H:%M:%S')}"
    )
    for column in ("SERVICE", "REQ/S", "ERR %", "P50 ≤", "P99 ≤", "REVISION", "TRAFFIC"):
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    table.add_column("INSTANCES")
    for service in overview["services"]:
        cells = [service["name"], _number(service["rps"]), _number(service["error_pct"])]
        cells += [_number(service["p50_ms"], " ms", 0), _number(service["p99_ms"], " ms", 0)]
        for revision in service["revisions"] or [None]:
            if revision is None:
                table.add_row(*cells, "-", "-", "")
                continue
            traffic = "shared" if revision["traffic"] is None else f"{revision['traffic']:g}%"
            chips = Text()
            for instance in revision["instances"]:
                colour = _COLOURS.get(instance["health"], "magenta")
                chips.append(f"● {instance['id']} ", style=colour)
            table.add_row(*cells, revision["revision"], traffic, chips)
            cells = [""] * len(cells)  # the service's numbers on its first line only
    lines = [
        Text(f"{time.strftime('%H:%M:%S', time.localtime(e['time']))}  {e['kind']:<11} {e['text']}")
        for e in overview["events"][:events]
    ]
    if not overview["services"]:
        table.caption = "no service yet: shoal apply -f deploy/examples/hello-world"
    return Group(table, Text(""), Text("events", style="bold"), *lines or [Text("none yet")])


@app.command(short_help="The dashboard's numbers, live in the terminal.")
def top(
    redis: RedisOpt = None,
    every: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[
        bool, typer.Option(help="Print one frame (two readings apart) and exit.")
    ] = False,
) -> None:
    """Per service: requests/s, error %, p50/p99 latency, revisions with their traffic share
    and instances coloured by health (green ready, yellow starting, red ejected); then the
    latest events. Ctrl-C stops it.

    Example: shoal top
    """
    from shoal.platform.dashboard.server import Live as Overviews
    from shoal.platform.dashboard.server import read

    async def run(client: Client) -> None:
        overviews = Overviews(lambda: read(client))
        await overviews.refresh()  # rates need two readings
        await asyncio.sleep(every)
        overview = await overviews.refresh()
        if once:
            from rich.console import Console

            Console().print(view(overview))
            return
        with Live(view(overview), auto_refresh=False) as live:
            while True:
                await asyncio.sleep(every)
                live.update(view(await overviews.refresh()), refresh=True)

    with contextlib.suppress(KeyboardInterrupt):
        with_client(redis, run)
