"""What ``shoal certs`` reads and asks: the mesh's certificates as components report them,
leaf renewal, root rotation, and waiting for either to be done everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shoal.errors import NotFoundError, PlatformError
from shoal.identity.certs import write_private_key
from shoal.identity.issuance import make_csr, sign
from shoal.identity.pki import bundle_pem, key_id, new_key, parse_bundle
from shoal.platform.ca.authority import request_root_rotation
from shoal.platform.ca.rotation import Phase, check_phase, lagging
from shoal.platform.ca.signer import CAFiles
from shoal.store.acks import live_reports
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.pki import PKIStore

POLL = 0.2


@dataclass(frozen=True, slots=True)
class Root:
    """A root of the trust bundle."""

    id: str
    subject: str
    not_after: str


@dataclass(frozen=True, slots=True)
class CertsStatus:
    """The bundle, the epoch, the rotation state and every live component's certificates."""

    roots: list[Root]
    epoch: int
    rotation: dict[str, str]
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # its "certs" report

    @property
    def bundle_ids(self) -> set[str]:
        """Key ids of the bundle's roots."""
        return {r.id for r in self.roots}

    def trusts_bundle(self, component: str) -> bool:
        """Whether ``component`` trusts exactly the bundle's roots."""
        return set(self.components[component].get("trusts", ())) == self.bundle_ids


async def certs_status(redis: Redis, keys: Keys) -> CertsStatus:
    """Read the bundle, epoch and rotation state, and the components' reports."""
    store = PKIStore(redis, keys)
    bundle, epoch = await store.bundle_and_epoch()
    roots = [
        Root(
            id=key_id(c),
            subject=c.subject.rfc4514_string(),
            not_after=c.not_valid_after_utc.isoformat(timespec="seconds"),
        )
        for c in (parse_bundle(bundle) if bundle else [])  # none before a CA has published
    ]
    reports = await live_reports(redis, keys)
    return CertsStatus(
        roots=roots,
        epoch=epoch,
        rotation=await store.rotation(),
        components={c: r["certs"] for c, r in sorted(reports.items()) if "certs" in r},
    )


async def renew_leaves(
    redis: Redis, keys: Keys, timeout: float, progress: Callable[[str], None]
) -> int:
    """Raise the epoch so every component renews its leaves now; wait until all have.
    Returns the new epoch."""
    epoch = await PKIStore(redis, keys).raise_epoch()
    progress(f"epoch {epoch}: every component renews its certificates")

    def waiting(reports: dict[str, dict[str, Any]]) -> list[str]:
        return lagging("reissue", None, reports, epoch)

    await _until(redis, keys, waiting, timeout, progress)
    return epoch


async def rotate_root(
    redis: Redis, keys: Keys, timeout: float, progress: Callable[[str], None]
) -> dict[str, str]:
    """Ask the controller for a root rotation and follow it to the end; return its state."""
    store = PKIStore(redis, keys)
    await request_root_rotation(store, datetime.now(UTC))
    progress("asked the leading controller for a new root")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: tuple[str, str] = ("requested", "")
    while True:
        state = await store.rotation()
        phase: Phase = check_phase(state.get("phase", "requested"))
        now = (phase, state.get("waiting", ""))
        if now != seen:
            seen = now
            progress(_describe(phase, state))
        if phase == "done":
            return state
        if loop.time() >= deadline:
            raise PlatformError(
                f"the root rotation is still in phase {phase} after {timeout:.0f}s"
                + (f", waiting for {state['waiting']}" if state.get("waiting") else "")
                + " (it goes on; follow it with 'shoal certs status')"
            )
        await asyncio.sleep(POLL)


def _describe(phase: Phase, state: dict[str, str]) -> str:
    waiting = f" (waiting for {state['waiting']})" if state.get("waiting") else ""
    return {
        "requested": "waiting for the leading controller to start",
        "trust": f"new root {state.get('new', '?')}: every component trusts old and new{waiting}",
        "reissue": f"new root signs: every leaf re-issued{waiting}",
        "retire": f"old root {state.get('old', '?')} removed from the bundle{waiting}",
        "done": f"done: root {state.get('new', '?')} alone is trusted",
    }[phase]


async def _until(
    redis: Redis,
    keys: Keys,
    waiting: Callable[[dict[str, dict[str, Any]]], list[str]],
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: list[str] | None = None
    while True:
        left = waiting(await live_reports(redis, keys))
        if not left:
            return
        if left != last:
            progress(f"waiting for {', '.join(left)}")
            last = left
        if loop.time() >= deadline:
            raise PlatformError(f"not renewed after {timeout:.0f}s: {', '.join(left)}")
        await asyncio.sleep(POLL)


def issue_local(
    files: CAFiles, trust_domain: str, identity: str, valid_for: timedelta, out: Path
) -> list[Path]:
    """Sign a certificate for ``identity`` with the CA on this host's disk (an operator's tool:
    debugging with ``openssl s_client``/``curl``, or a workload outside Shoal). Writes
    ``cert.pem``, ``key.pem`` (0600) and ``bundle.pem`` into ``out``; returns their paths."""
    if not (files.directory / "root.key").exists():
        raise NotFoundError(
            f"no mesh CA in {files.directory}: run this where the controller keeps its state"
        )
    now = datetime.now(UTC)
    ca = files.load_or_create(trust_domain, now)
    key = new_key()
    cert = sign(ca, make_csr(key, identity), allowed=lambda _: True, now=now, valid_for=valid_for)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cert.pem", out / "key.pem", out / "bundle.pem"]
    paths[0].write_bytes(cert)
    write_private_key(paths[1], key)
    paths[2].write_bytes(bundle_pem(files.trusted()))
    return paths
