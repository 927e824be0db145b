"""Control-plane scale (issue #20): what one change costs as the cluster grows.

    python -m bench.scale [--sizes 100,1000,5000,20000]            (make bench-scale)
    python -m bench.scale --in-process [--sizes ...] [--repeat 5]

By default it measures a running ``shoal up``, a fresh one per size (:mod:`bench.scale_live`:
change-to-routed latency, CPU per change per component, idle Redis traffic, RSS, GET latency
under churn, restart-to-routing, ``shoal status``; about 2.5 minutes for the four sizes).

``--in-process`` times Shoal's own snapshot code in this process instead: for each N it builds
a store view of N instances in S = N/10 services (each with a VirtualService splitting it 90/10
between two subsets and a DestinationRule naming them), then times, with ``time.process_time``
(CPU, not wall: other work on the machine does not count):

- ``full build``: a fresh proxy's first snapshot of the view;
- ``registry change``: the snapshot update after one instance of one service changes state;
- ``config change``: the update after one VirtualService's weights change;
- ``new service``: the update after a Service of a new name is deployed;

and prints the median of ``--repeat`` runs per column. Both print the growth exponent of each
column between the smallest and the largest N (1: cost grows with the cluster; 0: with the
change only).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from immutables import Map

from shoal.mesh.proxy_state import ProxyState
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text, to_document
from shoal.store.registry import INSTANCE
from shoal.store.watch import View

PER_SERVICE = 10  # instances per service


def _service_docs(name: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The documents of one service's two revisions, its VirtualService and DestinationRule."""
    text = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: {name}}}
spec: {{command: [sleep, "1"], revision: v1}}
---
apiVersion: shoal/v1
kind: Service
metadata: {{name: {name}}}
spec: {{command: [sleep, "1"], revision: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
  - route:
    - {{destination: {{host: {name}, subset: v1}}, weight: 90}}
    - {{destination: {{host: {name}, subset: v2}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""
    docs: dict[str, dict[str, dict[str, Any]]] = {}
    for resource in parse_text(text):
        docs.setdefault(resource.kind, {})[resource.key] = to_document(resource)
    return docs


def view_of(n: int) -> View:
    """A view of ``n`` instances in ``n / PER_SERVICE`` services."""
    config: dict[str, dict[str, dict[str, Any]]] = {}
    instances: dict[str, Endpoint] = {}
    for s in range(max(1, n // PER_SERVICE)):
        name = f"svc{s}"
        for kind, docs in _service_docs(name).items():
            config.setdefault(kind, {}).update(docs)
        for i in range(PER_SERVICE):
            revision = "v1" if i < PER_SERVICE - 1 else "v2"
            e = Endpoint(
                id=f"{s:05d}{i:03d}",
                service=name,
                revision=revision,
                node="n1",
                address="127.0.0.1",
                port=20000 + i,
                labels=(("app", name), ("version", revision)),
                state="ready",
            )
            instances[e.key] = e
    frozen = MappingProxyType({k: MappingProxyType(v) for k, v in config.items()})
    return View(
        revision=1,
        config=frozen,
        instances=Map(instances),
        nodes=MappingProxyType({"n1": {"address": "127.0.0.1", "mesh_port": 15006}}),
    )


def _cpu_ms(update: Callable[[View], object], view: View) -> float:
    started = time.process_time()
    update(view)
    return (time.process_time() - started) * 1000


def measure(n: int, repeat: int) -> dict[str, float]:
    """Median CPU ms of each column for ``n`` instances."""
    view = view_of(n)
    full, registry, config, deploy = [], [], [], []
    for round_ in range(repeat):
        state = ProxyState()
        full.append(_cpu_ms(state.update, view))
        key = next(iter(view.instances))
        instances = view.instances
        assert isinstance(instances, Map)  # (a watcher's view: an immutables.Map)
        was = instances[key]
        changed = instances.set(key, replace(was, state="draining" if round_ % 2 == 0 else "ready"))
        after_registry = replace(view, instances=changed, changes={INSTANCE: frozenset({key})})
        registry.append(_cpu_ms(state.update, after_registry))
        vs = dict(view.documents("VirtualService"))
        doc = dict(vs["svc0"])
        spec = dict(doc["spec"])
        route = dict(spec["http"][0])
        weights = (50 + round_, 50 - round_)
        route["route"] = [dict(d, weight=w) for d, w in zip(route["route"], weights, strict=True)]
        spec["http"] = [route]
        doc["spec"] = spec
        vs["svc0"] = doc
        config_view = dict(after_registry.config)
        config_view["VirtualService"] = MappingProxyType(vs)
        after_config = replace(
            after_registry,
            revision=2 + round_,
            config=MappingProxyType(config_view),
            changes={"VirtualService": frozenset({"svc0"})},
        )
        config.append(_cpu_ms(state.update, after_config))
        service = _service_docs(f"new{round_}")["Service"]
        key = next(iter(service))
        config_view["Service"] = MappingProxyType({**view.documents("Service"), key: service[key]})
        after_deploy = replace(
            after_config,
            revision=3 + round_,
            config=MappingProxyType(config_view),
            changes={"Service": frozenset({key})},
        )
        deploy.append(_cpu_ms(state.update, after_deploy))
    return {
        "full build": statistics.median(full),
        "registry change": statistics.median(registry),
        "config change": statistics.median(config),
        "new service": statistics.median(deploy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,20000")
    parser.add_argument("--repeat", type=int, default=5, help="with --in-process")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time the snapshot code in this process instead of a running shoal up",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.in_process:
        _table(
            f"CPU ms per proxy (median of {args.repeat}), one process, this machine",
            sizes,
            {n: measure(n, args.repeat) for n in sizes},
        )
        return
    from bench.scale_live import run

    _table("on a running shoal up, this machine", sizes, run(sizes))


def _table(title: str, sizes: list[int], results: dict[int, dict[str, float]]) -> None:
    """Print ``results`` as a table: a line per column, a column per size, then the growth
    exponent between the smallest and the largest size (1: grows with the cluster; 0: not)."""
    print(title)
    columns = list(next(iter(results.values())))
    width = max(len(c) for c in columns)
    print(f"{'N instances':<{width}} " + "".join(f"{n:>10}" for n in sizes) + "   growth exp.")
    lo, hi = min(sizes), max(sizes)
    for c in columns:
        values = "".join(f"{results[n][c]:>10.2f}" for n in sizes)
        a, b = results[lo][c], results[hi][c]
        exponent = math.log(b / a) / math.log(hi / lo) if a > 0 and b > 0 and hi > lo else math.nan
        print(f"{c:<{width}} {values}{exponent:>14.2f}")


if __name__ == "__main__":
    main()
