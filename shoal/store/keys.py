"""The Redis key layout, in one place. Every key starts with the prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix, so several clusters can share a server."""

    prefix: str = "shoal:"

    def config(self, kind: str) -> str:
        """Hash of one kind's resources: field = resource key, value = JSON document."""
        return f"{self.prefix}cfg:{kind}"

    @property
    def revision(self) -> str:
        """The global config revision counter."""
        return f"{self.prefix}rev"

    @property
    def changes(self) -> str:
        """The change stream: config and registry state changes."""
        return f"{self.prefix}changes"

    @property
    def instances(self) -> str:
        """Hash of instance records: field = ``service/id``."""
        return f"{self.prefix}instances"

    @property
    def instance_leases(self) -> str:
        """Sorted set of instance lease deadlines (ms, Redis clock)."""
        return f"{self.prefix}leases:instances"

    @property
    def nodes(self) -> str:
        """Hash of node records: field = node id."""
        return f"{self.prefix}nodes"

    @property
    def node_leases(self) -> str:
        """Sorted set of node lease deadlines (ms, Redis clock)."""
        return f"{self.prefix}leases:nodes"

    def node_instances(self, node: str) -> str:
        """Set of the instances whose lease is node ``node``'s (see shoal.store.registry)."""
        return f"{self.node_instances_prefix}{node}"

    @property
    def node_instances_prefix(self) -> str:
        """:meth:`node_instances` without the node id."""
        return f"{self.prefix}leases:node:"

    @property
    def acks(self) -> str:
        """Hash: component id → config revision it has applied."""
        return f"{self.prefix}acks"

    @property
    def ack_leases(self) -> str:
        """Sorted set of component liveness deadlines, for ``apply --wait``."""
        return f"{self.prefix}leases:acks"

    @property
    def reports(self) -> str:
        """Hash: component id → its last report (JSON: counters, ejections, load)."""
        return f"{self.prefix}reports"

    @property
    def leader(self) -> str:
        """The controller leader lease."""
        return f"{self.prefix}leader"

    @property
    def load(self) -> str:
        """Hash of per-service load samples written by proxies."""
        return f"{self.prefix}load"

    @property
    def bundle(self) -> str:
        """The trust bundle: every root currently trusted, PEM."""
        return f"{self.prefix}pki:bundle"

    @property
    def csr(self) -> str:
        """Stream of certificate requests, read by the signer's consumer group."""
        return f"{self.prefix}pki:csr"

    @property
    def epoch(self) -> str:
        """Counter: every leaf issued before the current epoch is renewed at once."""
        return f"{self.prefix}pki:epoch"

    @property
    def rotation(self) -> str:
        """Hash: the root rotation asked for or under way, and its phase."""
        return f"{self.prefix}pki:rotation"

    @property
    def autoscaler(self) -> str:
        """Hash: ``service/revision`` → the autoscaler's last decision (JSON), for status."""
        return f"{self.prefix}autoscaler"

    @property
    def tokens(self) -> str:
        """Hash: join token id → its secret's digest, expiry and uses left (JSON)."""
        return f"{self.prefix}pki:tokens"

    @property
    def admitted(self) -> str:
        """Hash: requester (``node/<id>``, a gateway's name) → when a join token admitted it."""
        return f"{self.prefix}pki:admitted"

    @property
    def events(self) -> str:
        """List: the latest operator events (drills), newest first, as JSON (capped)."""
        return f"{self.prefix}events"
