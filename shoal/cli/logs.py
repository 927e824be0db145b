"""``shoal logs``: the output of a service's instances (or a component's log) on this host."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.common import RedisOpt, app, fail, with_client
from shoal.errors import NotFoundError
from shoal.platform import settings
from shoal.platform.control.client import Client

COMPONENTS = ("controller", "node", "gateway")
FOLLOW_EVERY = 0.2  # seconds between looks at the files with -f


def instance_logs(
    log_dir: Path, service: str, revisions: Iterable[str], instance: str | None = None
) -> list[tuple[str, Path]]:
    """``(revision/instance, path)`` of the logs of ``service``'s instances of ``revisions``
    in ``log_dir`` (files ``<service>-<revision>-<instance>.log``), oldest first."""
    found = []
    for revision in revisions:
        for path in log_dir.glob(f"{service}-{revision}-*.log"):
            own = path.name[len(f"{service}-{revision}-") : -len(".log")]
            if "-" not in own and (instance is None or own == instance):
                found.append((f"{revision}/{own}", path))
    return sorted(found, key=lambda item: item[1].stat().st_mtime)


def last_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last ``count`` lines of ``path`` and its size (where following goes on)."""
    data = path.read_bytes()
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count else [], len(data)


@app.command(short_help="The output of a service's instances on this host.")
def logs(
    service: Annotated[
        str, typer.Argument(help="A service, or a component: controller, node, gateway.")
    ],
    revision: Annotated[str | None, typer.Option(help="Only this revision's instances.")] = None,
    instance: Annotated[str | None, typer.Option(help="Only this instance (its id).")] = None,
    tail: Annotated[int, typer.Option(help="Lines to show from each log.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print new lines.")] = False,
    past: Annotated[
        bool, typer.Option("--all", help="Also the logs of instances that are gone.")
    ] = False,
    redis: RedisOpt = None,
) -> None:
    """The output of a service's running instances on this host (each line after its
    revision/instance; --all: gone ones too), or a component's log, from $SHOAL_HOME/logs
    (instances' in logs/instances: each cut at 10 MiB, the previous part kept as .1; the logs of
    gone instances kept for a day, 50 at most).

    Example: shoal logs hello --tail 20 -f
    """
    log_dir = settings.state_dir() / "logs"
    if service in COMPONENTS and (log_dir / f"{service}.log").exists():
        sources = [(service, log_dir / f"{service}.log")]
    else:

        async def known(client: Client) -> tuple[list[str], set[str]]:
            revisions = {s.revision for s in await client.services() if s.name == service}
            live = {e.id for e in await client.registry.instances() if e.service == service}
            return sorted(revisions), live

        revisions, live = with_client(redis, known)
        chosen = [revision] if revision else revisions
        sources = instance_logs(log_dir / "instances", service, chosen, instance)
        if not past:
            sources = [(name, path) for name, path in sources if name.split("/")[1] in live]
        if not sources:
            raise fail(NotFoundError(f"no instance logs of {service} in {log_dir / 'instances'}"))
    sizes = {}
    for name, path in sources:
        lines, sizes[path] = last_lines(path, max(0, tail))
        for line in lines:
            typer.echo(f"[{name}] {line}")
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(FOLLOW_EVERY)
            for name, path in sources:
                data = b""
                with contextlib.suppress(OSError), path.open("rb") as f:
                    if os.fstat(f.fileno()).st_size < sizes[path]:  # cut at its size limit
                        sizes[path] = 0
                    f.seek(sizes[path])
                    data = f.read()
                    sizes[path] += len(data)
                for line in data.decode("utf-8", "replace").splitlines():
                    typer.echo(f"[{name}] {line}")
