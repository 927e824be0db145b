"""The mesh CA at work: its key on the controller's disk, its bundle in Redis, CSRs signed.

- :class:`CAFiles` keeps the root certificate and key under ``<state>/ca`` (the key mode 0600);
  the key never enters Redis.
- The trust bundle (every root currently trusted, PEM) is one Redis key that every component
  reads.
- Certificate requests travel on a Redis stream read by a consumer group, so a request made
  while no controller leads is signed when one does; each answer goes to the requester's own
  reply list (``BLPOP``), kept a minute.

Private keys are made where they are used (:class:`IdentityRequester`): only CSRs and
certificates cross Redis. Who may ask for which identity is decided by the ``entitled``
function the signer is given; today the requester names itself, so Redis access is the root of
trust (join tokens are issue 6).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from shoal.errors import StoreError
from shoal.platform.certs import verify_chain, write_private_key
from shoal.platform.pki import (
    CA,
    PKIError,
    bundle_pem,
    cert_from_pem,
    key_to_pem,
    make_csr,
    new_key,
    new_root,
    sign,
)
from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

GROUP = "signers"
REPLY_TTL = 60  # seconds a signed certificate waits in its reply list
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


async def publish_bundle(redis: Redis, keys: Keys, roots: Sequence[CA | x509.Certificate]) -> None:
    """Make ``roots`` the trusted bundle."""
    certs = [r.cert if isinstance(r, CA) else r for r in roots]
    async with translated("publishing the trust bundle"):
        await redis.set(keys.bundle, bundle_pem(certs).decode())


async def read_bundle(redis: Redis, keys: Keys) -> bytes | None:
    """The trusted bundle, or None before any CA published one."""
    async with translated("reading the trust bundle"):
        raw = await redis.get(keys.bundle)
    return None if raw is None else str(raw).encode()


class Signer:
    """Signs the certificate requests on the stream, for identities their requester may hold."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ca: CA,
        entitled: Callable[[str, str], bool],
        admit: Callable[[str, str | None], Awaitable[str | None]] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ca = ca
        self.entitled = entitled
        self.admit = admit  # requester, join token -> None if admitted, else why not
        self.consumer = uuid.uuid4().hex[:8]

    async def ensure_group(self) -> None:
        """Create the stream's consumer group if it does not exist."""
        try:
            async with translated("creating the CSR group"):
                await self.redis.xgroup_create(self.keys.csr, GROUP, id="0", mkstream=True)
        except StoreError as e:
            if "BUSYGROUP" not in str(e):  # Redis's answer when the group exists already
                raise

    async def sign_pending(self, now: datetime, *, block_ms: int = 0) -> int:
        """Answer the requests waiting (blocking up to ``block_ms`` for one); return how many."""
        async with translated("reading certificate requests"):
            reply = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                {self.keys.csr: ">"},
                count=100,
                block=block_ms or None,
            )
        # decode_responses=True: ids and fields are str (redis-py's stubs cannot say so)
        entries: list[tuple[str, dict[str, str]]] = reply[0][1] if reply else []  # type: ignore[index,assignment]
        for entry_id, fields in entries:
            await self._answer(fields, now)
            async with translated("acknowledging a certificate request"):
                await self.redis.xack(self.keys.csr, GROUP, entry_id)
        return len(entries)

    async def _answer(self, fields: dict[str, str], now: datetime) -> None:
        requester, identity = fields.get("requester", ""), fields.get("identity", "")
        try:
            refused = await self.admit(requester, fields.get("token")) if self.admit else None
            if refused is not None:
                raise PKIError(refused)
            cert = sign(
                self.ca,
                fields["csr"].encode(),
                allowed=lambda spiffe: spiffe == identity and self.entitled(requester, identity),
                now=now,
                valid_for=LEAF_LIFETIME,
            )
            answer = {"cert": cert.decode()}
            log.info("signed %s for %s", identity, requester)
        except (PKIError, KeyError) as e:
            answer = {"error": str(e)}
            log.warning("refused %s for %s: %s", identity, requester, e)
        async with translated("answering a certificate request"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(fields["reply"], json.dumps(answer))
                pipe.expire(fields["reply"], REPLY_TTL)
                await pipe.execute()


@dataclass(frozen=True, slots=True)
class Issued:
    """A private key and the certificate the CA signed for it."""

    identity: str
    cert_pem: bytes
    key_pem: bytes


class IdentityRequester:
    """Gets certificates for the identities a component holds: key here, CSR over Redis."""

    def __init__(
        self, redis: Redis, keys: Keys, requester: str, join_token: str | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.requester = requester
        self.join_token = join_token  # sent with every request; used only until admitted

    async def issue(self, identity: str, now: datetime, *, timeout: float = 4.0) -> Issued:
        """A fresh key and a signed, verified certificate for ``identity``."""
        key = new_key()
        reply = f"{self.keys.prefix}pki:reply:{uuid.uuid4().hex}"
        async with translated("requesting a certificate"):
            await self.redis.xadd(
                self.keys.csr,
                {
                    "requester": self.requester,
                    "identity": identity,
                    "csr": make_csr(key, identity).decode(),
                    "reply": reply,
                    **({"token": self.join_token} if self.join_token else {}),
                },
            )
        async with translated("waiting for a certificate"):
            answer = await self.redis.blpop([reply], timeout=timeout)
        if answer is None:
            raise PKIError(
                f"no CA answered the request for {identity} within {timeout:.0f}s "
                "(is a controller running?)"
            )
        body = json.loads(answer[1])
        if "error" in body:
            raise PKIError(f"the CA refused {identity}: {body['error']}")
        cert_pem = body["cert"].encode()
        bundle = await read_bundle(self.redis, self.keys)
        if bundle is None:
            raise PKIError("no trust bundle is published")
        verify_chain(cert_pem, bundle, now)
        return Issued(identity=identity, cert_pem=cert_pem, key_pem=key_to_pem(key))
