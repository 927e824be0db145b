"""The mesh CA at work: its key on the controller's disk, CSRs signed.

- :class:`CAFiles` keeps the root certificate and key under ``<state>/ca`` (the key mode 0600);
  the key never enters Redis.
- :class:`Signer` answers the certificate requests on the store's CSR stream
  (:mod:`shoal.store.pki`).

Private keys are made where they are used (:class:`shoal.mesh.credentials.IdentityRequester`):
only CSRs and certificates cross Redis. Who may ask for which identity is decided by the
``entitled`` function the signer is given, and whether the requester is admitted at all by its
``admit`` function (join tokens, :mod:`.tokens`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from shoal.identity.certs import write_private_key
from shoal.identity.issuance import CA, new_root, sign
from shoal.identity.pki import JoinRefused, PKIError, bundle_pem, cert_from_pem
from shoal.store.pki import PKIStore

log = logging.getLogger(__name__)

LEAF_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class CAFiles:
    """The mesh CA's roots on the controller's disk: ``root.*`` signs; during a rotation
    ``next.*`` is the root to come and ``previous.pem`` the one going (its key is no longer
    needed). Keys are mode 0600 in a 0700 directory."""

    directory: Path

    def _load(self, name: str, trust_domain: str) -> CA | None:
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        if not (cert_path.exists() and key_path.exists()):
            return None
        ca = CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        if ca.trust_domain != trust_domain:
            raise PKIError(
                f"the CA in {self.directory} is for trust domain "
                f"{ca.trust_domain!r}, not {trust_domain!r}"
            )
        return ca

    def _create(self, name: str, trust_domain: str, now: datetime) -> CA:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        ca = new_root(trust_domain, now)
        write_private_key(self.directory / f"{name}.key", ca.key)
        (self.directory / f"{name}.pem").write_bytes(ca.to_pem()[0])
        return ca

    def load_or_create(self, trust_domain: str, now: datetime) -> CA:
        """The signing root; a new one is made (and kept) on first start."""
        ca = self._load("root", trust_domain)
        if ca is None:
            ca = self._create("root", trust_domain, now)
            log.info("created the mesh CA for %s in %s", trust_domain, self.directory)
        return ca

    def next_root(self, trust_domain: str, now: datetime) -> CA:
        """The root a rotation moves to (made on first call)."""
        return self._load("next", trust_domain) or self._create("next", trust_domain, now)

    def promote(self) -> None:
        """The next root signs from now on; the old one is kept as ``previous.pem`` (trusted,
        no longer signing). Does nothing when already promoted."""
        d = self.directory
        if not (d / "next.pem").exists():
            return
        os.replace(d / "root.pem", d / "previous.pem")
        os.replace(d / "next.key", d / "root.key")
        os.replace(d / "next.pem", d / "root.pem")

    def retire(self) -> None:
        """Forget the previous root."""
        (self.directory / "previous.pem").unlink(missing_ok=True)

    def trusted(self) -> list[x509.Certificate]:
        """The roots the bundle must hold now: previous (if any), signing, next (if any)."""
        names = ("previous.pem", "root.pem", "next.pem")
        return [
            cert_from_pem(path.read_bytes())
            for path in (self.directory / n for n in names)
            if path.exists()
        ]


def bundle_of(roots: Sequence[CA | x509.Certificate]) -> bytes:
    """The trust bundle (PEM) that holds ``roots``."""
    return bundle_pem([r.cert if isinstance(r, CA) else r for r in roots])


class Signer:
    """Signs the certificate requests on the stream, for identities their requester may hold."""

    def __init__(
        self,
        store: PKIStore,
        ca: CA,
        entitled: Callable[[str, str], bool],
        admit: Callable[[dict[str, str]], Awaitable[str | None]] | None = None,
    ) -> None:
        self.store = store
        self.ca = ca
        self.entitled = entitled
        self.admit = admit  # a request's fields -> None if its requester is admitted, else why not
        self.consumer = uuid.uuid4().hex[:8]

    async def sign_pending(self, now: datetime, *, block_ms: int = 0) -> int:
        """Answer the requests waiting (blocking up to ``block_ms`` for one); return how many."""
        entries = await self.store.pending_requests(self.consumer, block_ms=block_ms)
        for entry_id, fields in entries:
            reply = fields.get("reply")
            if reply is None:
                await self.store.acknowledge(entry_id)
            else:
                await self.store.answer(entry_id, reply, await self._answer(fields, now))
        return len(entries)

    async def _answer(self, fields: dict[str, str], now: datetime) -> dict[str, str]:
        requester, identity = fields.get("requester", ""), fields.get("identity", "")
        try:
            refused = await self.admit(fields) if self.admit else None
            if refused is not None:
                raise JoinRefused(refused)
            cert = sign(
                self.ca,
                fields["csr"].encode(),
                allowed=lambda spiffe: spiffe == identity and self.entitled(requester, identity),
                now=now,
                valid_for=LEAF_LIFETIME,
            )
        except (PKIError, KeyError) as e:
            log.warning("refused %s for %s: %s", identity, requester, e)
            if isinstance(e, JoinRefused):  # the requester stops asking
                return {"error": str(e), "refused": "admission"}
            return {"error": str(e)}
        log.info("signed %s for %s", identity, requester)
        return {"cert": cert.decode()}
