"""Who may hold which identity, and how a root rotation proceeds: pure decisions.

Root rotation (``shoal certs rotate --root``) goes through three phases, each confirmed by every
live component's report (its leaves' issuers and the roots it trusts) before the next begins,
so that no handshake ever meets a certificate its peer does not trust:

1. ``trust``: a new root is made; the bundle holds old and new; leaves are still signed by the
   old root. Done when every component trusts the new root.
2. ``reissue``: the new root signs; the epoch is raised, so every component renews its leaves at
   once. Done when every leaf is issued by the new root.
3. ``retire``: the bundle holds the new root only. Done when every component trusts only it.

``shoal certs rotate`` without ``--root`` is phase 2 alone, with the same root.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from shoal.errors import UserError
from shoal.identity.spiffe import InvalidSpiffeId, parse_spiffe

Phase = Literal["requested", "trust", "reissue", "retire", "done"]
PHASES: tuple[Phase, ...] = ("requested", "trust", "reissue", "retire", "done")


def entitled(
    requester: str,
    identity: str,
    trust_domain: str,
    placements: Mapping[str, Mapping[str, int]],
) -> bool:
    """Whether ``requester`` (``node/<id>`` or ``gateway…``) may hold ``identity``.

    A node may hold its own node identity and the identity of every service placed on it
    (``placements``: node id → ``service/revision`` → instance count); a gateway, the gateway
    identity. Nothing else, and nothing outside ``trust_domain``.
    """
    try:
        spiffe = parse_spiffe(identity)
    except InvalidSpiffeId:
        return False
    if spiffe.trust_domain != trust_domain:
        return False
    kind, _, name = requester.partition("/")
    if spiffe.path == "/gateway":
        return kind == "gateway"
    if kind != "node" or not name:
        return False
    if spiffe.path == f"/node/{name}":
        return True
    service = spiffe.service
    return service is not None and any(
        key.split("/", 1)[0] == service and count > 0
        for key, count in placements.get(name, {}).items()
    )


def _certs(report: Mapping[str, Any]) -> tuple[set[str], list[Mapping[str, Any]]]:
    certs = report.get("certs") or {}
    return set(certs.get("trusts") or ()), list(certs.get("leaves") or ())


def lagging(
    phase: Phase, new_root: str | None, reports: Mapping[str, Mapping[str, Any]], epoch: int = 0
) -> list[str]:
    """The components (of those that report certificates) not yet where ``phase`` needs them.

    ``trust``: trusting ``new_root``; ``reissue``: holding leaves, every one issued under
    ``epoch`` or later, and by ``new_root`` unless it is None; ``retire``: trusting ``new_root``
    only.
    """
    out = []
    for component, report in sorted(reports.items()):
        if "certs" not in report:
            continue
        trusts, leaves = _certs(report)
        if phase == "trust":
            ok = new_root in trusts
        elif phase == "reissue":
            ok = bool(leaves) and all(
                new_root in (None, leaf.get("issuer")) and int(leaf.get("epoch", 0)) >= epoch
                for leaf in leaves
            )
        elif phase == "retire":
            ok = trusts == {new_root}
        else:
            ok = True
        if not ok:
            out.append(component)
    return out


def check_phase(value: str) -> Phase:
    """``value`` as a Phase, or a UserError naming it."""
    for phase in PHASES:
        if value == phase:
            return phase
    raise UserError(f"unknown rotation phase {value!r}")
