"""The leading controller's CA duties: publish the bundle, sign requests, drive rotations.

:class:`Authority` is started when a controller gains the lead and stopped when it loses it.
While it runs, a task answers the CSR stream (:class:`~shoal.platform.ca.signer.Signer`) and the
controller's tick calls :meth:`Authority.tick`, which moves a root rotation asked for by
``shoal certs rotate --root`` through its phases (:mod:`shoal.platform.ca.rotation`) as the
components' reports confirm each one. The phase lives in Redis (``pki:rotation``), the roots on
this controller's disk, so a restarted controller resumes where its predecessor stopped.

A controller whose CA is not the one that published the bundle in Redis refuses to sign and
says so: two CAs in one mesh would split it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from shoal.errors import ShoalError
from shoal.identity.issuance import CA
from shoal.identity.pki import PKIError, key_id, parse_bundle
from shoal.mesh.credentials import utcnow
from shoal.mesh.tasks import OwnedTasks
from shoal.platform.ca.rotation import check_phase, lagging
from shoal.platform.ca.signer import CAFiles, Signer, bundle_of
from shoal.platform.ca.tokens import JoinTokens
from shoal.store.connection import honour_cancellation
from shoal.store.pki import PKIStore

log = logging.getLogger(__name__)

SIGN_BLOCK_MS = 1_000  # below the client's socket timeout


class Authority:
    """Signs for the mesh while this controller leads."""

    def __init__(
        self,
        store: PKIStore,
        files: CAFiles,
        trust_domain: str,
        entitled: Callable[[str, str], bool],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.files = files
        self.trust_domain = trust_domain
        self.clock = clock
        self.signer = Signer(store, self._load(), entitled, JoinTokens(store).admit)
        self._signing = OwnedTasks("the CA")

    def _load(self) -> CA:
        return self.files.load_or_create(self.trust_domain, self.clock())

    async def start(self) -> None:
        """Check the bundle in Redis is ours (publishing it when there is none) and start
        answering certificate requests."""
        published = await self.store.bundle()
        ours = {key_id(c) for c in self.files.trusted()}
        if published is not None and not {key_id(c) for c in parse_bundle(published)} & ours:
            raise PKIError(
                f"the trust bundle in Redis was published by another CA than the one in "
                f"{self.files.directory}: copy that CA's files there, or run this controller "
                "where they are"
            )
        await self._publish()
        await self.store.ensure_group()
        self._signing.spawn(self._serve(), name="signer")

    async def stop(self) -> None:
        """Stop signing (the lead is lost, or the controller stops)."""
        await self._signing.cancel()

    async def _publish(self) -> None:
        await self.store.publish_bundle(bundle_of(self.files.trusted()))

    async def _serve(self) -> None:
        while True:
            try:
                await self.signer.sign_pending(self.clock(), block_ms=SIGN_BLOCK_MS)
            except ShoalError as e:
                log.warning("certificate requests not served: %s", e)
                await asyncio.sleep(1.0)
            honour_cancellation()

    async def tick(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """Advance a root rotation, if one is asked for or under way."""
        state = await self.store.rotation()
        if not state or state.get("phase") in (None, "done"):
            return
        phase = check_phase(state["phase"])
        now = self.clock()
        update: dict[str, str] = {}
        if phase == "requested":
            new = self.files.next_root(self.trust_domain, now)
            await self._publish()
            update = {"phase": "trust", "old": key_id(self.signer.ca.cert), "new": key_id(new.cert)}
        else:
            waiting = lagging(phase, state["new"], reports, int(state.get("epoch", 0)))
            update = {"waiting": ",".join(waiting)}
            if not waiting and phase == "trust":
                self.files.promote()
                self.signer.ca = self._load()
                await self._publish()
                epoch = await self.store.raise_epoch()
                update = {"phase": "reissue", "epoch": str(epoch), "waiting": ""}
            elif not waiting and phase == "reissue":
                self.files.retire()
                await self._publish()
                update = {"phase": "retire", "waiting": ""}
            elif not waiting and phase == "retire":
                update = {"phase": "done", "waiting": "", "finished": now.isoformat()}
        if update.get("phase"):
            log.info("root rotation: %s", update["phase"])
        update["updated"] = now.isoformat(timespec="seconds")
        await self.store.update_rotation(update)


async def request_root_rotation(store: PKIStore, now: datetime) -> None:
    """Ask the leading controller to rotate the root (refused while one is under way)."""
    phase = await store.request_rotation(now.isoformat(timespec="seconds"))
    if phase is not None:
        raise PKIError(f"a root rotation is already under way (phase {phase})")
