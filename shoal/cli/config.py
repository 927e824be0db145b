"""Commands that read and change configuration: apply/deploy, get, delete, weights, scale,
rollout, status."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from shoal.cli import render
from shoal.errors import PlatformError, ShoalError, UserError
from shoal.platform import settings
from shoal.platform.control.client import KIND_ALIASES, Client
from shoal.platform.control.rollout import RollBack
from shoal.resources.manifest import load_files
from shoal.resources.model import Service
from shoal.resources.weights import split_route

if TYPE_CHECKING:
    pass

from shoal.cli.common import (
    OutputOpt,
    RedisOpt,
    app,
    fail,
    lines,
    progress,
    show,
    with_client,
    with_store,
)


@app.command(
    "deploy",
    help="Same as apply: a Service spec change is a new revision.\n\n"
    "Example: shoal deploy -f deploy/examples/hello-world/ --wait",
)
@app.command(short_help="Validate and apply manifests, all or nothing.")
def apply(
    file: Annotated[list[str], typer.Option("-f", "--file", help="Manifest file(s); - is stdin.")],
    redis: RedisOpt = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait until every proxy applied it and each new revision (scale.min > 0) has "
            "a ready instance; a revision that cannot get one fails the command (exit 5)."
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 30.0,
    output: OutputOpt = "table",
) -> None:
    """Validate and apply manifests: all documents land together, or none do.

    Example: shoal apply -f deploy/examples/hello-world/hello.yaml
    """
    try:
        resources = load_files(file)
    except ShoalError as e:
        raise fail(e) from None

    async def go(c: Client) -> tuple[Any, dict[str, int], dict[str, str]]:
        applied = await c.apply(resources)
        if not wait:
            return applied, {}, {}
        lagging = await c.wait_applied(applied.revision, timeout)
        new = [
            r for r in resources if isinstance(r, Service) and f"Service/{r.key}" in applied.changed
        ]
        return applied, lagging, await c.wait_ready(new, timeout)

    applied, lagging, failed = with_client(redis, go)
    show(dataclasses.asdict(applied), output, lambda: render.applied(applied))
    if lagging:
        raise fail(
            ShoalError(
                "not applied yet by: "
                + ", ".join(f"{c} (at {r})" for c, r in sorted(lagging.items()))
            )
        )
    if failed:
        raise fail(
            PlatformError(
                "not ready: "
                + "; ".join(f"{key}: {why}" for key, why in sorted(failed.items()))
                + " (see shoal status and shoal logs SERVICE --all)"
            )
        )


def _kinds() -> str:
    """Every kind ``get`` and ``delete`` take, with its shortest alias."""
    aliases: dict[str, list[str]] = {}
    for alias, kind in KIND_ALIASES.items():
        aliases.setdefault(kind, []).append(alias)
    return ", ".join(f"{kind.lower()} ({min(names, key=len)})" for kind, names in aliases.items())


KINDS = _kinds()


@app.command(short_help="Show stored resources, or a service's revisions.")
def get(
    kind: Annotated[str, typer.Argument(help=f"{KINDS}, or revisions SERVICE")],
    name: Annotated[str | None, typer.Argument()] = None,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Show stored resources; "revisions SERVICE" lists a service's revisions with their
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


@app.command(short_help="Shift traffic to a revision in steps, or roll back.")
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
    output: OutputOpt = "table",
) -> None:
    """Move traffic to a new revision in steps, watching its error rate and (with --max-p99)
    latency; roll back by itself when it breaches a limit (exit 1).

    Example: shoal rollout hello --to v2 --steps 10,50,100 --interval 30s --max-error-rate 1%
    """
    from shoal.platform.control.rollout import parse_error_rate, parse_interval, parse_steps
    from shoal.platform.control.rollout_runner import start_rollout

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
    say = progress(output)
    result = with_client(redis, lambda c: start_rollout(c, service, to, say, **settings_))
    outcome = "rolled back" if isinstance(result, RollBack) else "done"
    show({"result": outcome, **dataclasses.asdict(result)}, output, lines())
    if isinstance(result, RollBack):
        raise typer.Exit(1)


@app.command(short_help="Delete a resource (a Service with its own routes).")
def delete(
    kind: Annotated[str, typer.Argument(help=KINDS)],
    name: Annotated[
        str,
        typer.Argument(
            help="Name (a Service name deletes all revisions; NAME/REVISION deletes one)."
        ),
    ],
    keep_routes: Annotated[
        bool,
        typer.Option(
            help="Deleting a Service: keep the VirtualServices and DestinationRules that only "
            "served it (by default they go too)."
        ),
    ] = False,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Delete a resource; a Service with the routing that only served it.

    Example: shoal delete service world
    """
    revision, deleted = with_client(redis, lambda c: c.delete(kind, name, keep_routes=keep_routes))
    text = [f"deleted {label}" for label in deleted] + [f"revision {revision}"]
    show({"deleted": deleted, "revision": revision}, output, lines(*text))


@app.command(short_help="Split a service's traffic between revisions.")
def weights(
    service: Annotated[str, typer.Argument()],
    split: Annotated[list[str], typer.Argument(help="SUBSET=WEIGHT pairs summing to 100")],
    route: Annotated[
        str | None,
        typer.Option(help="The http[] route (by name) to split; default: the catch-all route."),
    ] = None,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Split a service's traffic between subsets: edits one route of its VirtualService (the
    catch-all one, or --route NAME); header and path rules stay as they are.

    Example: shoal weights hello v1=80 v2=20
    """
    vs, revision = with_client(redis, lambda c: c.weights(service, split, route))
    edited = vs.http[split_route(service, vs, route)]
    parts = ", ".join(f"{d.destination.subset}={d.weight}" for d in edited.route)
    which = f"route {edited.name}" if edited.name else "default route"
    data = {
        "virtualservice": vs.name,
        "route": edited.name,
        "weights": {d.destination.subset: d.weight for d in edited.route},
        "revision": revision,
    }
    text = f"VirtualService {vs.name} ({which}): {service} → {parts} (revision {revision})"
    show(data, output, lines(text))


@app.command(short_help="Set a service's scaling bounds.")
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
    output: OutputOpt = "table",
) -> None:
    """Set a service's scaling bounds (every revision, or --revision), in place.

    Example: shoal scale hello --min 3 --max 10
    """
    scaled = with_client(
        redis, lambda c: c.scale(service, min=min, max=max, target=target, revision=revision)
    )
    data = [
        {
            "revision": s.key,
            "min": s.scale.min,
            "max": s.scale.max,
            "target": s.scale.target_concurrency,
        }
        for s in scaled
    ]
    text = [f"{d['revision']}: min {d['min']}, max {d['max']}, target {d['target']}" for d in data]
    show(data, output, lines(*text))


@app.command(short_help="Name a revision: reached at Host TAG-SERVICE.")
def tag(
    service: Annotated[str, typer.Argument()],
    tag: Annotated[str, typer.Argument(help="The tag: a DNS label, e.g. candidate.")],
    revision: Annotated[
        str | None, typer.Argument(help="The revision it names (omit with --remove).")
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Take the tag away.")] = False,
    redis: RedisOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Tag a revision (Knative's traffic tags): it is reached at the host TAG-SERVICE whatever
    its share of the traffic, e.g. to try a revision before it gets any.

    Example: shoal tag hello candidate v2   (then: curl -H 'Host: candidate-hello' ...)
    """
    if revision is None and not remove:
        raise fail(UserError("name the revision to tag (or give --remove)"))
    changed = with_client(redis, lambda c: c.tag(service, revision, tag, remove=remove))
    text = [f"{s.key}: tags {', '.join(s.tags) or '-'}" for s in changed]
    host = None if remove else f"{tag}-{service}"
    if host is not None:
        text.append(f"host {host} reaches {service}/{revision}")
    data = {"revisions": [{"revision": s.key, "tags": list(s.tags)} for s in changed]}
    show({**data, "host": host}, output, lines(*text))


@app.command(short_help="Nodes, services and instances (--watch: live).")
def status(
    redis: RedisOpt = None,
    output: OutputOpt = "table",
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then print every instance change.")
    ] = False,
    every: Annotated[
        bool,
        typer.Option(
            "--instances",
            help=f"List every instance (beyond {render.SUMMARY_OVER}, they are counted).",
        ),
    ] = False,
) -> None:
    """Nodes, services and instances with revision, node, address, pid and state.

    Example: shoal status --watch
    """
    st = with_client(redis, lambda c: c.status())
    show(
        render.status_dict(st),
        output,
        lambda: render.status(st, wide=output == "wide", every=every),
    )
    if watch:
        url = settings.redis_url(redis)
        typer.echo("\nwatching instance changes (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            with_store(url, lambda c: c.follow(url, render.instance_change))
