"""Human output of the CLI: rich tables. Scripts use ``-o json``."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from shoal.platform.control.client import Applied, InstanceChange, Status
from shoal.platform.drills.drill import Report

if TYPE_CHECKING:
    from shoal.platform.ca.admin import CertsStatus

# Piped output (scripts, CI logs) gets room for whole identities rather than rich's 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

STATE_STYLE = {"ready": "green", "starting": "yellow", "draining": "cyan", "unhealthy": "red"}


def applied(a: Applied) -> None:
    """What an apply changed."""
    for label in a.changed:
        console.print(f"{label} applied")
    for label in a.unchanged:
        console.print(f"{label} unchanged")
    console.print(f"revision {a.revision}")


def documents(docs: list[dict[str, Any]]) -> None:
    """A table of stored documents: kind, name, a one-line summary and the labels."""
    table = Table(box=None, pad_edge=False)
    for col in ("KIND", "NAME", "SUMMARY", "LABELS"):
        table.add_column(col)
    for d in docs:
        spec = d.get("spec", {})
        name = d["metadata"]["name"]
        if d["kind"] == "Service":
            name = f"{name}/{spec.get('revision', '')}"
            summary = f"app={spec['app']}" if "app" in spec else f"command={spec.get('command')}"
        elif d["kind"] == "VirtualService":
            summary = f"hosts={','.join(spec.get('hosts', []))} rules={len(spec.get('http', []))}"
        elif d["kind"] == "DestinationRule":
            subsets = ",".join(s["name"] for s in spec.get("subsets", []))
            summary = f"host={spec.get('host')} subsets={subsets or '-'}"
        elif d["kind"] == "Gateway":
            ports = (
                f"{srv['port']['number']}/{srv['port']['protocol']}={','.join(srv['hosts'])}"
                for srv in spec.get("servers", [])
            )
            summary = f"servers={' '.join(ports)}"
        elif d["kind"] == "ServiceEntry":
            summary = (
                f"hosts={','.join(spec.get('hosts', []))} {spec.get('resolution')} "
                f"endpoints={len(spec.get('endpoints', []))}"
            )
        elif d["kind"] == "PeerAuthentication":
            summary = f"mtls={spec.get('mtls', {}).get('mode', 'UNSET')}"
        else:
            summary = f"action={spec.get('action', 'ALLOW')} rules={len(spec.get('rules', []))}"
        labels = d["metadata"].get("labels", {})
        shown = ",".join(f"{k}={v}" for k, v in labels.items()) or "-"
        table.add_row(d["kind"], name, summary, shown)
    console.print(table)


def status_dict(st: Status) -> dict[str, Any]:
    """The status as plain data, for ``-o json``."""
    return {
        "revision": st.revision,
        "nodes": st.nodes,
        "services": [
            {
                "name": s.name,
                "revision": s.revision,
                "min": s.scale.min,
                "max": s.scale.max,
                "autoscaler": st.autoscaler.get(s.key),
            }
            for s in st.services
        ],
        "instances": [
            {
                "service": e.service,
                "revision": e.revision,
                "id": e.id,
                "node": e.node,
                "address": e.authority,
                "pid": e.pid,
                "state": e.state,
                "restarts": e.restarts,
                "reason": e.reason,
                "exit": e.exit,
                "output": e.output,
                "retry_at": e.retry_at,
            }
            for e in st.instances
        ],
        "proxies": st.acks,
        "reports": st.reports,
    }


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in columns:
        table.add_column(col)
    return table


def _row(table: Table, cells: dict[str, str], wide: tuple[str, ...], show_wide: bool) -> None:
    """Add ``cells`` (column → text) in the table's order; ``wide`` columns only with -o wide."""
    table.add_row(*(text for col, text in cells.items() if show_wide or col not in wide))


NODE_WIDE = ("PID", "INSTANCE UIDS")
INSTANCE_WIDE = ("ADDRESS", "PID")
PROXY_WIDE = ("RETRIES", "HELD", "ACTIVATIONS", "COLD START MS (RECENT)")


SUMMARY_OVER = 100
"""More instances than this: ``shoal status`` counts them by service, revision, node and state
instead of listing each (``--instances`` lists them all)."""


def status(st: Status, *, wide: bool = False, every: bool = False) -> None:
    """Nodes, services and instances as tables (``wide``: with pids, addresses, uids and the
    proxies' retry and activation counts; beyond :data:`SUMMARY_OVER` instances, their counts
    unless ``every``)."""

    def columns(names: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if wide or n not in extra)

    nodes = _table("nodes", columns(("NODE", "MESH", "HOST", "PID", "INSTANCE UIDS"), NODE_WIDE))
    limited: list[str] = []
    for node_id, rec in st.nodes.items():
        isolation = rec.get("isolation") or {}
        limits = isolation.get("limits") or []
        limited += [f"{node_id}: isolation is limited: {limit}" for limit in limits]
        cells = {
            "NODE": node_id,
            "MESH": str(rec.get("mesh", "")),
            "HOST": str(rec.get("host", "")),
            "PID": str(rec.get("pid", "")),
            "INSTANCE UIDS": (isolation.get("uids") or "platform's")
            + (" (limited)" if limits else ""),
        }
        _row(nodes, cells, NODE_WIDE, wide)
    console.print(nodes)
    for line in limited:
        console.print(f"[yellow]{line}[/yellow]", highlight=False)

    ready = Counter((e.service, e.revision) for e in st.instances if e.state == "ready")
    services = Table(title="\nservices", title_justify="left", box=None, pad_edge=False)
    for col in ("SERVICE", "REVISION", "READY", "DESIRED", "MIN", "MAX", "AUTOSCALER"):
        services.add_column(col)
    for s in st.services:
        decision = st.autoscaler.get(s.key, {})
        reason = decision.get("reason", "-")
        services.add_row(
            s.name,
            s.revision,
            str(ready[(s.name, s.revision)]),
            str(decision.get("desired", "-")),
            str(s.scale.min),
            str(s.scale.max),
            f"[red]panic[/red] {reason}" if decision.get("panicking") else reason,
        )
    console.print(services)

    if every or len(st.instances) <= SUMMARY_OVER:
        _instances(st, wide)
    else:
        _instance_counts(st)
    _proxies(st, wide)


def _instance_counts(st: Status, shown: int = 20) -> None:
    """The instances counted by node and state, then the revisions with instances not ready
    (the ``shown`` with most of them: state counts, and how their last runs ended)."""
    by_node: dict[str, Counter[str]] = {}
    waiting: dict[tuple[str, str], Counter[str]] = {}
    reasons: dict[tuple[str, str], Counter[str]] = {}
    for e in st.instances:
        by_node.setdefault(e.node, Counter())[e.state] += 1
        if e.state != "ready":
            key = (e.revision_key, e.node)
            waiting.setdefault(key, Counter())[e.state] += 1
            if e.reason:
                reasons.setdefault(key, Counter())[e.reason] += 1
    title = f"\ninstances: {len(st.instances)}, counted (--instances lists each; -o json too)"
    nodes = _table(title, ("NODE", "INSTANCES", "READY", "NOT READY"))
    for node, states in sorted(by_node.items()):
        others = ", ".join(f"{n} {s}" for s, n in sorted(states.items()) if s != "ready")
        nodes.add_row(node, str(states.total()), str(states["ready"]), others or "-")
    console.print(nodes)
    if not waiting:
        return
    ranked = sorted(waiting.items(), key=lambda item: (-item[1].total(), item[0]))
    table = _table("\nnot ready, by revision", ("REVISION", "NODE", "STATES", "WHY"))
    for key, states in ranked[:shown]:
        why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.get(key, {}).items()))
        table.add_row(*key, ", ".join(f"{n} {s}" for s, n in sorted(states.items())), why or "-")
    console.print(table)
    if len(ranked) > shown:
        console.print(f"… and {len(ranked) - shown} more revisions with instances not ready")


def _instances(st: Status, wide: bool) -> None:
    """Every instance, a row each."""

    def columns(names: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if wide or n not in extra)

    instance_columns = (
        "SERVICE",
        "REVISION",
        "INSTANCE",
        "NODE",
        "ADDRESS",
        "PID",
        "STATE",
        "RESTARTS",
        "LAST EXIT",
    )
    instances = _table("\ninstances", columns(instance_columns, INSTANCE_WIDE))
    now = time.time()
    for e in st.instances:
        style = STATE_STYLE.get(e.state, "")
        retry = f"next start in {max(0, e.retry_at - now):.0f}s" if e.retry_at else ""
        last = " ".join(p for p in (e.reason, f"({e.exit})" if e.exit else "", retry) if p)
        cells = dict(
            zip(
                instance_columns,
                (
                    e.service,
                    e.revision,
                    e.id,
                    e.node,
                    e.authority,
                    str(e.pid or "-"),
                    f"[{style}]{e.state}[/{style}]",
                    str(e.restarts),
                    last or "-",
                ),
                strict=True,
            )
        )
        _row(instances, cells, INSTANCE_WIDE, wide)
    console.print(instances)


def _proxies(st: Status, wide: bool) -> None:
    """Each proxy's applied revision and counters, and the gateways' servers."""

    def columns(names: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if wide or n not in extra)

    proxy_columns = (
        "PROXY",
        "REVISION",
        "REQUESTS",
        "RETRIES",
        "IN-FLIGHT",
        "HELD",
        "ACTIVATIONS",
        "COLD START MS (RECENT)",
        "REFUSED",
        "EJECTED",
    )
    proxies = _table("\nproxies", columns(proxy_columns, PROXY_WIDE))
    for component, revision in sorted(st.acks.items()):
        r = st.reports.get(component, {})
        refused = ", ".join(f"{c}={n}" for c, n in sorted(r.get("refusals", {}).items()))
        ejected = ", ".join(
            f"{e['instance']} ({e['reason']}, {e['for']}s)"
            for entries in r.get("ejections", {}).values()
            for e in entries
        )
        cells = dict(
            zip(
                proxy_columns,
                (
                    component,
                    str(revision),
                    str(r.get("requests", 0)),
                    str(r.get("retries", 0)),
                    str(sum(r.get("in_flight", {}).values())),
                    str(sum(r.get("held", {}).values())),
                    str(r.get("activations", 0)),
                    " ".join(f"{c:g}" for c in r.get("cold_starts_ms", [])[-5:]) or "-",
                    refused or "-",
                    ejected or "-",
                ),
                strict=True,
            )
        )
        _row(proxies, cells, PROXY_WIDE, wide)
    console.print(proxies)
    _gateway_servers(st.reports)
    console.print(f"\nconfig revision {st.revision}")


def _gateway_servers(reports: dict[str, dict[str, Any]]) -> None:
    """Each gateway process's Gateway servers: port, hosts, TLS and its certificate."""
    rows, problems = [], []
    for component, report in sorted(reports.items()):
        served = report.get("gateway_servers") or {}
        problems += [f"{component}: {p}" for p in served.get("problems", [])]
        for server in served.get("servers", []):
            cert = server.get("certificate") or {}
            shown = (
                f"[red]{cert['error']}[/red]"
                if "error" in cert
                else f"{cert.get('subject', '-')} SANs={','.join(cert.get('sans', [])) or '-'}"
                f" until {cert.get('not_after', '-')}"
                if cert
                else "-"
            )
            rows.append(
                (
                    component,
                    server["gateway"],
                    f"{server['port']}/{server['protocol']}",
                    ",".join(server["hosts"]),
                    server.get("tls", "-"),
                    shown,
                )
            )
    if not rows and not problems:
        return
    table = Table(title="\ngateway servers", title_justify="left", box=None, pad_edge=False)
    for col in ("PROXY", "GATEWAY", "PORT", "HOSTS", "TLS", "CERTIFICATE"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for problem in problems:
        console.print(f"[yellow]{problem}[/yellow]", highlight=False)


def instance_change(c: InstanceChange) -> None:
    """One line for an instance change, with the time it was seen."""
    now = time.strftime("%H:%M:%S")
    ep = c.after or c.before
    assert ep is not None
    what = f"{ep.service}/{ep.revision} {ep.id}"
    if c.after is None:
        console.print(f"{now}  {what}  [dim]gone[/dim]")
        return
    style = STATE_STYLE.get(c.after.state, "")
    before = f"{c.before.state} → " if c.before is not None else "new, "
    console.print(
        f"{now}  {what}  {before}[{style}]{c.after.state}[/{style}]  "
        f"{c.after.authority} pid {c.after.pid or '-'}"
    )


def drill(r: Report) -> None:
    """A drill's report."""
    console.print(f"drill: fault [bold]{r.fault}[/bold] on {', '.join(r.targets)}")
    errors = ", ".join(f"{c}={n}" for c, n in sorted(r.errors.items())) or "none"
    style = "green" if not r.errors else "red"
    console.print(
        f"requests {r.requests}, client-visible errors [{style}]{errors}[/{style}] "
        f"({r.error_rate:.2%}), retried by proxies {r.retried}"
    )

    def secs(v: float | None) -> str:
        return "not seen" if v is None else f"{v:.2f}s"

    if not r.fault.startswith("redis"):
        console.print(
            f"detected after {secs(r.detected_after)}, recovered after {secs(r.recovered_after)}"
        )
    table = Table(box=None, pad_edge=False)
    for col in ("PHASE", "REQUESTS", "P50 MS", "P99 MS"):
        table.add_column(col)
    for name in ("before", "during", "after"):
        p = getattr(r, name)
        table.add_row(name, str(p.requests), str(p.p50_ms or "-"), str(p.p99_ms or "-"))
    console.print(table)
    for note in r.notes:
        console.print(f"note: {note}")


def certs_dict(st: CertsStatus) -> dict[str, Any]:
    """``shoal certs status -o json``."""
    return {
        "bundle": [{"id": r.id, "subject": r.subject, "not_after": r.not_after} for r in st.roots],
        "epoch": st.epoch,
        "rotation": st.rotation,
        "components": {
            c: {**certs, "trusts_bundle": st.trusts_bundle(c)} for c, certs in st.components.items()
        },
    }


def certs(st: CertsStatus) -> None:
    """The bundle's roots, then one row per identity a component holds."""
    roots = Table(title="trust bundle", title_justify="left", box=None, pad_edge=False)
    for col in ("ROOT", "SUBJECT", "EXPIRES"):
        roots.add_column(col)
    for r in st.roots:
        roots.add_row(r.id, r.subject, r.not_after)
    console.print(roots)
    leaves = Table(title="\nidentities", title_justify="left", box=None, pad_edge=False)
    for col in ("COMPONENT", "IDENTITY", "ISSUER", "EXPIRES", "EPOCH", "TRUSTS BUNDLE"):
        leaves.add_column(col)
    for component, held in st.components.items():
        trusts = "yes" if st.trusts_bundle(component) else "[red]no[/red]"
        for leaf in held.get("leaves", []) or [{}]:
            leaves.add_row(
                component,
                leaf.get("identity", "(none yet)"),
                leaf.get("issuer", "-"),
                leaf.get("not_after", "-"),
                str(leaf.get("epoch", "-")),
                trusts,
            )
    console.print(leaves)
    phase = st.rotation.get("phase")
    if phase:
        waiting = st.rotation.get("waiting")
        console.print(f"\nroot rotation: {phase}" + (f", waiting for {waiting}" if waiting else ""))
    console.print(f"\nepoch {st.epoch}")


def rotation_plan(st: CertsStatus, *, root: bool) -> None:
    """What ``shoal certs rotate [--root]`` would do, for ``--dry-run``."""
    components = ", ".join(st.components) or "(none live)"
    count = sum(len(c.get("leaves", [])) for c in st.components.values())
    old = ", ".join(r.id for r in st.roots) or "(none)"
    if not root:
        console.print(
            f"would raise the epoch to {st.epoch + 1}: {count} leaf certificates renewed now, "
            f"signed by the current root ({old}), on {components}"
        )
        return
    console.print(
        "would rotate the root, step by step, each confirmed by every component:\n"
        f"  1. make a new root; the bundle holds {old} and the new one; "
        f"wait until {components} trust both\n"
        f"  2. sign with the new root; re-issue all {count} leaf certificates; "
        "wait until every leaf chains to it\n"
        f"  3. remove {old} from the bundle; wait until nothing trusts it"
    )


def revisions(rows: list[dict[str, Any]]) -> None:
    """``shoal get revisions``: one row per revision."""
    table = Table(box=None, pad_edge=False)
    for col in (
        "REVISION",
        "STATE",
        "TRAFFIC",
        "TAGS",
        "READY",
        "INSTANCES",
        "DESIRED",
        "MIN",
        "MAX",
    ):
        table.add_column(col)
    for r in rows:
        traffic = "by instances" if r["traffic"] is None else f"{r['traffic']:g}%"
        desired = "-" if r["desired"] is None else str(r["desired"])
        table.add_row(
            r["revision"],
            r["state"],
            traffic,
            ",".join(r["tags"]) or "-",
            str(r["ready"]),
            str(r["instances"]),
            desired,
            str(r["min"]),
            str(r["max"]),
        )
    console.print(table)
