"""A snapshot changed by what changed is the snapshot built whole, and shares the rest.

A proxy that is told what changed since the last view (instances, nodes, VirtualServices,
DestinationRules, Service revisions) changes its routing table where they are
(RoutingTable.changed) instead of building it again. Random sequences of changes, each applied
both ways, must route alike, and a change to one service must leave every other cluster object
as it was (``is``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from bench.scale import view_of
from shoal.mesh.follow import merged
from shoal.mesh.proxy_state import ProxyState
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text, to_document
from shoal.store.registry import INSTANCE, NODE
from shoal.store.watch import View

SERVICES = ("a", "b", "c", "d")
NODES = ("n1", "n2", "n3")
# ServiceEntry hosts: a destination host names one only while an entry has it (else the
# service of its first label: a.example.com names a, api.x.test names api)
ENTRY_HOSTS = ("a.example.com", "x.example.com", "api.x.test")
ENTRY_NAMES = ("se0", "se1", "se2")
# The endpoint keys ServiceEntries may have (``host/entry-index``), some failing checks
ENTRY_KEYS = tuple(f"{h}/{n}-{i}" for h in ENTRY_HOSTS for n in ENTRY_NAMES for i in (0, 1))
HOSTS = ("a", "b", "c", "d", "a.example.com", "x.example.com", "www.b.test", "canary-a", "zz")


def _doc(text: str) -> dict[str, Any]:
    [resource] = parse_text(text)
    return to_document(resource)


def _service(name: str, revision: str, tags: str = "") -> dict[str, Any]:
    tagged = f", tags: [{tags}]" if tags else ""
    spec = f"{{command: [sleep, '1'], revision: {revision}{tagged}}}"
    return _doc(f"apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}")


def _virtual_service(rng: random.Random, name: str) -> dict[str, Any]:
    """A VirtualService with random hosts, a prefix rule, a weighted split and a mirror."""
    hosts = rng.sample(["a", "b.default.svc.cluster.local", "*.example.com", "*", "www.b.test"], 2)
    one, two = rng.sample([*SERVICES, *ENTRY_HOSTS], 2)
    subset = rng.choice(["v1", "v2", "nope"])
    weight = rng.randrange(0, 101)
    gateways = rng.choice(["", "gateways: [edge]", "gateways: [edge, mesh]"])
    return _doc(
        f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: {list(hosts)}
  {gateways}
  http:
  - match: [{{uri: {{prefix: /{rng.choice(["x", "y"])}}}}}]
    route: [{{destination: {{host: {one}}}}}]
    mirror: {{host: {two}}}
  - route:
    - {{destination: {{host: {one}, subset: {subset}}}, weight: {weight}}}
    - {{destination: {{host: {two}}}, weight: {100 - weight}}}
"""
    )


def _rule(rng: random.Random, name: str) -> dict[str, Any]:
    host = rng.choice([*SERVICES, "a.default.svc.cluster.local", *ENTRY_HOSTS])
    balancer = rng.choice(["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"])
    return _doc(
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {host}
  trafficPolicy: {{loadBalancer: {{simple: {balancer}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: {rng.choice(["v2", "v3"])}}}}}
"""
    )


def _authorization(rng: random.Random, name: str) -> dict[str, Any]:
    selector = rng.choice(
        ["", "selector: {matchLabels: {app: a}}", "selector: {matchLabels: {app: b}}"]
    )
    action = rng.choice(["ALLOW", "DENY"])
    rule = rng.choice(
        [
            "{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}",
            "{to: [{operation: {methods: [POST]}}]}",
        ]
    )
    return _doc(
        f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec:
  {selector}
  action: {action}
  rules: [{rule}]
"""
    )


def _peer_authentication(rng: random.Random, name: str) -> dict[str, Any]:
    selector = rng.choice(["", "selector: {matchLabels: {app: a}}"])
    mode = rng.choice(["STRICT", "PERMISSIVE", "DISABLE"])
    return _doc(
        f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}}}
spec:
  {selector}
  mtls: {{mode: {mode}}}
"""
    )


def _entry(rng: random.Random, name: str) -> dict[str, Any]:
    hosts = rng.sample(ENTRY_HOSTS, rng.randrange(1, 3))
    protocol = rng.choice(["HTTP", "HTTPS"])
    static = rng.random() < 0.6
    endpoints = "endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]" if static else ""
    return _doc(
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: {hosts}
  ports: [{{number: 80, name: web, protocol: {protocol}}}]
  resolution: {"STATIC" if static else "DNS"}
  {endpoints}
"""
    )


def _gateway(rng: random.Random, name: str) -> dict[str, Any]:
    port = rng.choice([8081, 8082])
    return _doc(
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
"""
    )


def _endpoint(rng: random.Random, key: int) -> Endpoint:
    return Endpoint(
        id=f"i{key}",
        service=rng.choice([*SERVICES, "ghost"]),
        revision=rng.choice(["v1", "v2"]),
        node=rng.choice(NODES),
        address="127.0.0.1",
        port=20000 + key,
        labels=(("version", rng.choice(["v1", "v2", "v3"])),),
        state=rng.choice(["ready", "ready", "starting", "draining"]),
        mtls=rng.random() < 0.7,  # (run by a node: reachable while the node's router is)
    )


class Store:
    """What a watcher holds, handing over views with what changed since the last one."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.revision = 1
        self.config: dict[str, dict[str, dict[str, Any]]] = {
            "Service": {
                "a/v1": _service("a", "v1"),
                "a/v2": _service("a", "v2", tags="canary"),
                "b/v1": _service("b", "v1"),
                "c/v1": _service("c", "v1"),
            },
            "VirtualService": {f"vs{i}": _virtual_service(rng, f"vs{i}") for i in range(4)},
            "DestinationRule": {f"dr{i}": _rule(rng, f"dr{i}") for i in range(3)},
            "AuthorizationPolicy": {"ap0": _authorization(rng, "ap0")},
            "PeerAuthentication": {},
            "Gateway": {},
            "ServiceEntry": {"se0": _entry(rng, "se0")},
        }
        self.instances = {e.key: e for e in (_endpoint(rng, i) for i in range(20))}
        self.nodes = {"n1": {"mesh": "127.0.0.1:15006"}, "n2": {"mesh": "127.0.0.1:15007"}}
        self.changes: dict[str, set[str]] = {}

    def view(self) -> View:
        changes = {k: frozenset(v) for k, v in self.changes.items()}
        self.changes = {}
        return View(
            revision=self.revision,
            config=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.config.items()}),
            instances=MappingProxyType(dict(self.instances)),
            nodes=MappingProxyType(dict(self.nodes)),
            changes=changes,
        )

    def change(self) -> None:
        """One random change, noted as a watcher notes it."""
        rng = self.rng
        what = rng.random()
        if what < 0.6:
            key = rng.choice(list(self.instances))
            if rng.random() < 0.2:
                del self.instances[key]
            elif rng.random() < 0.5:  # a state change
                old = self.instances[key]
                self.instances[key] = replace(old, state=rng.choice(["ready", "draining"]))
            else:  # a new instance, or one that moves to another service or revision
                new = _endpoint(rng, rng.randrange(0, 30))
                self.instances[key := new.key] = new
            self.changes.setdefault(INSTANCE, set()).add(key)
            return
        if what < 0.65:  # a node comes, goes, or its router moves
            node = rng.choice(NODES)
            if node in self.nodes and rng.random() < 0.5:
                del self.nodes[node]
            else:
                self.nodes[node] = {"mesh": f"127.0.0.1:{rng.randrange(15000, 15010)}"}
            self.changes.setdefault(NODE, set()).add(node)
            return
        if what < 0.7:  # a Service revision added, replaced or deleted
            name = rng.choice(["a", "b", "c", "e", "canary-a"])
            key = f"{name}/{rng.choice(['v1', 'v2', 'v3'])}"
            services = self.config["Service"]
            if key in services and rng.random() < 0.4:
                del services[key]
            else:
                tags = rng.choice(["", "", "canary", "beta"])
                services[key] = _service(name, key.split("/")[1], tags=tags)
            self.revision += 1
            self.changes.setdefault("Service", set()).add(key)
            return
        kind, make = (
            ("VirtualService", _virtual_service)
            if what < 0.84
            else ("DestinationRule", _rule)
            if what < 0.94
            else ("AuthorizationPolicy", _authorization)
            if what < 0.96
            else ("PeerAuthentication", _peer_authentication)
            if what < 0.97
            else ("Gateway", _gateway)
            if what < 0.98
            else ("ServiceEntry", _entry)
        )
        name = f"{kind[:2].lower()}{rng.randrange(0, 6)}"
        if kind == "ServiceEntry":
            name = rng.choice(ENTRY_NAMES)
        docs = self.config[kind]
        if name in docs and rng.random() < 0.25:
            del docs[name]
        else:
            docs[name] = make(rng, name)
        self.revision += 1
        self.changes.setdefault(kind, set()).add(name)


def _routes(state: ProxyState) -> list[Any]:
    """Where every test host and path goes, as comparable values, in the mesh and at ``edge``."""
    out: list[Any] = []
    for gateway in (None, "edge"):
        table = state.table.bound(gateway)
        for host in HOSTS:
            for path in ("/", "/x", "/y/z"):
                m = table.resolve(host, "GET", path, {})
                out.append(
                    None
                    if m is None
                    else (
                        m.name,
                        m.match_index,
                        tuple(c.key for c in m.clusters),
                        m.weights,
                        m.mirror.key if m.mirror else None,
                    )
                )
    return out


def _policies(state: ProxyState) -> list[Any]:
    """The snapshot's Gateways, and what its authorization and PeerAuthentication policies
    decide, as comparable values."""
    snapshot = state.snapshot
    out: list[Any] = [snapshot.peer_authentications, snapshot.plaintext_allowed, snapshot.gateways]
    for app in ("a", "b"):
        for principal in (None, "spiffe://cluster.local/ns/default/sa/a"):
            for method in ("GET", "POST"):
                out.append(snapshot.authorizer.check({"app": app}, principal, method, "/"))
    return out


def _clusters(state: ProxyState) -> Mapping[Any, Any]:
    return dict(state.table.clusters)


@pytest.mark.parametrize("seed", range(6))
def test_a_changed_snapshot_routes_as_one_built_whole(seed: int) -> None:
    rng = random.Random(seed)
    store = Store(rng)
    changed = ProxyState(random.Random(0))
    changed.update(store.view())
    for _ in range(150):
        was = dict(store.instances)
        for _ in range(rng.randrange(1, 4)):  # (a watcher's batch may hold several)
            store.change()
        view = store.view()
        before = dict(changed.table.clusters)
        changed.update(view)
        if view.changes is not None and set(view.changes) == {INSTANCE}:  # (it was changed)
            instances = view.instances
            changes = view.changes[INSTANCE]
            moved = {e.service for k in changes for e in (was.get(k), instances.get(k)) if e}
            kept = [k for k in before if k[0] not in moved and k in changed.table.clusters]
            assert all(changed.table.clusters[k] is before[k] for k in kept)
        if rng.random() < 0.2:  # ServiceEntry endpoints fail their checks, or recover
            changed.set_unreachable(frozenset(rng.sample(ENTRY_KEYS, rng.randrange(0, 6))))
        whole = ProxyState(random.Random(0))
        whole.unreachable = changed.unreachable
        whole.update(replace(view, changes=None))
        assert _clusters(changed) == _clusters(whole)
        assert _routes(changed) == _routes(whole)
        assert changed.snapshot.meshes == whole.snapshot.meshes
        assert changed.snapshot.probes == whole.snapshot.probes
        assert _policies(changed) == _policies(whole)
        assert set(changed.clusters) == set(whole.table.clusters)  # per-cluster state follows
        for key, cluster in changed.table.clusters.items():  # balancers follow the policy
            assert changed.table.balancer_for(cluster).policy == cluster.load_balancer, key


def test_a_change_to_one_service_leaves_every_other_cluster_as_it_was() -> None:
    rng = random.Random(7)
    store = Store(rng)
    ours = replace(_endpoint(rng, 99), service="a", state="ready", node="n1")
    store.instances[ours.key] = ours
    state = ProxyState(random.Random(0))
    state.update(store.view())
    before = dict(state.table.clusters)
    table = state.table
    key = ours.key
    store.instances[key] = replace(ours, state="draining")
    store.changes = {INSTANCE: {key}}
    state.update(store.view())
    after = state.table.clusters
    assert state.table is not table and set(after) == set(before)
    for cluster_key, cluster in after.items():
        if cluster_key[0] == "a":
            assert cluster is not before[cluster_key]
        else:
            assert cluster is before[cluster_key], cluster_key


def test_views_applied_together_are_the_last_with_every_change_since() -> None:
    """A burst of views applied at once (merged) changes the snapshot as they would one by
    one."""
    rng = random.Random(11)
    store = Store(rng)
    one_by_one, together = ProxyState(random.Random(0)), ProxyState(random.Random(0))
    first = store.view()
    one_by_one.update(first)
    together.update(first)
    for _ in range(40):
        burst = []
        for _ in range(rng.randrange(1, 5)):
            store.change()
            burst.append(store.view())
        for view in burst:
            one_by_one.update(view)
        together.update(merged(burst))
        assert _clusters(together) == _clusters(one_by_one)
        assert _routes(together) == _routes(one_by_one)


async def test_a_snapshot_built_whole_leaves_the_loop_serving() -> None:
    """A view that must be built whole is built in a thread: the event loop goes on running
    other work meanwhile (on the loop, it would not run until the build is over)."""
    state = ProxyState(random.Random(0))
    turns = 0
    building = True

    async def other_work() -> None:
        nonlocal turns
        while building:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    await state.apply(view_of(5000))
    during = turns - before
    building = False
    await task
    assert state.table.clusters and during > 1


def test_a_new_revision_of_a_service_changes_only_that_services_clusters() -> None:
    rng = random.Random(5)
    store = Store(rng)
    state = ProxyState(random.Random(0))
    state.update(store.view())
    before = dict(state.table.clusters)
    store.config["Service"]["b/v2"] = _service("b", "v2")
    store.changes = {"Service": {"b/v2"}}
    state.update(store.view())
    for key, cluster in state.table.clusters.items():
        if key[0] != "b" and key in before:
            assert cluster is before[key], key
    assert state.table.cluster("b") is not before.get(("b", None))


def test_a_node_that_goes_changes_only_the_clusters_of_its_instances() -> None:
    """A node's router gone: its instances in the mesh leave their clusters at once, and every
    other cluster object is kept (a node change is applied in place, not built whole)."""
    rng = random.Random(3)
    store = Store(rng)
    for key, e in list(store.instances.items()):
        node = "n2" if e.service == "b" else "n1"
        store.instances[key] = replace(e, node=node, mtls=True, state="ready")
    state = ProxyState(random.Random(0))
    state.update(store.view())
    before = dict(state.table.clusters)
    assert before[("b", None)].endpoints
    del store.nodes["n2"]
    store.changes = {NODE: {"n2"}}
    state.update(store.view())
    assert "n2" not in state.snapshot.meshes
    for key, cluster in state.table.clusters.items():
        if key[0] == "b":
            assert not cluster.endpoints, key
        else:
            assert cluster is before[key], key
