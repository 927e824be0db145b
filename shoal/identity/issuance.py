"""The mesh CA, pure: a root, CSRs, and the leaf certificates signed for them.

No clock reads and no I/O: every function that depends on time takes ``now`` (an aware
``datetime``). Keys, PEM and reading certificates are :mod:`shoal.identity.pki`, with the
errors raised here.

Certificates follow the SPIFFE X.509-SVID profile and RFC 5280 closely enough for strict
verifiers (OpenSSL's ``X509_V_FLAG_X509_STRICT``, Python 3.13's default ``VERIFY_X509_STRICT``,
cryptography's web-PKI policy):

- root: ECDSA P-256, self-signed, ``BasicConstraints(ca, path_length=0)`` and ``KeyUsage``
  (keyCertSign, cRLSign) both critical, SKI and AKI, subject CN ``Shoal mesh CA <trust domain>``,
  and the trust domain's own SPIFFE ID (``spiffe://<td>``) as its URI SAN;
- leaf: the requester's key, subject ``O=Shoal`` (not empty, so the SAN need not be critical),
  exactly one URI SAN (its SPIFFE ID; a node router's leaf also has the DNS SAN
  ``<node>.node.<trust domain>``), ``BasicConstraints(ca=False)`` and
  ``KeyUsage(digitalSignature)`` critical, ``ExtendedKeyUsage`` serverAuth + clientAuth, SKI and
  AKI, valid from ``now - 5 min`` (clock skew between hosts) for ``valid_for``.

A CSR that will not be signed raises :class:`~shoal.identity.pki.CSRRefused`; nothing is signed.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.identity.pki import (
    CSRRefused,
    PKIError,
    PrivateKey,
    cert_from_pem,
    cert_to_pem,
    key_from_pem,
    key_to_pem,
    new_key,
    single_spiffe_id,
    spiffe_id_of,
)
from shoal.identity.spiffe import SpiffeId, parse_spiffe

__all__ = ["CA", "CLOCK_SKEW", "make_csr", "new_root", "sign"]

CLOCK_SKEW = timedelta(minutes=5)
"""Certificates are valid from this long before ``now``, so a peer whose clock is a little
behind does not see them as not yet valid."""

_ROOT_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(hours=24)


def _aware(now: datetime) -> datetime:
    """``now`` must be timezone-aware: a naive time here is a bug, not an input error."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now


# ---------------------------------------------------------------------------------------------
# The CA


@dataclass(frozen=True, slots=True, kw_only=True)
class CA:
    """A signing CA: its certificate and private key, and the trust domain it names."""

    cert: x509.Certificate
    key: PrivateKey
    trust_domain: str

    def to_pem(self) -> tuple[bytes, bytes]:
        """``(certificate PEM, private key PEM)``; the key PEM is unencrypted."""
        return cert_to_pem(self.cert), key_to_pem(self.key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CA:
        """The CA stored as ``cert_pem`` and ``key_pem``.

        Raises PKIError when the certificate is not a Shoal CA (CA basic constraints, a
        ``spiffe://<trust domain>`` URI SAN) or the key is not its key.
        """
        cert = cert_from_pem(cert_pem)
        key = key_from_pem(key_pem)
        if cert.public_key() != key.public_key():
            raise PKIError("the CA private key does not match the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PKIError("the CA certificate has no basic constraints") from None
        if not constraints.ca:
            raise PKIError("the CA certificate is not a CA (basicConstraints ca=false)")
        spiffe_id = spiffe_id_of(cert)
        if spiffe_id.path:
            raise PKIError(f"the CA certificate names {spiffe_id}, not a trust domain")
        return cls(cert=cert, key=key, trust_domain=spiffe_id.trust_domain)


def new_root(trust_domain: str, now: datetime, *, valid_for: timedelta = _ROOT_LIFETIME) -> CA:
    """A new self-signed root CA for ``trust_domain``, valid from ``now`` (less the clock skew)
    for ``valid_for``. Raises InvalidSpiffeId when ``trust_domain`` is not a valid one."""
    domain_id = SpiffeId(trust_domain=trust_domain)
    now = _aware(now)
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shoal"),
            # CN is for people reading the cert; it is capped at 64 characters by X.520.
            x509.NameAttribute(NameOID.COMMON_NAME, f"Shoal mesh CA {trust_domain}"[:64]),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(domain_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(cert=cert, key=key, trust_domain=trust_domain)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---------------------------------------------------------------------------------------------
# CSRs and signing


def make_csr(key: PrivateKey, spiffe_id: str | SpiffeId) -> bytes:
    """The PEM of a CSR for ``spiffe_id`` (carried as the one URI SAN), signed by ``key``."""
    identity = spiffe_id if isinstance(spiffe_id, SpiffeId) else parse_spiffe(spiffe_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign(
    ca: CA,
    csr_pem: bytes,
    *,
    allowed: Callable[[str], bool] | AbstractSet[str],
    now: datetime,
    valid_for: timedelta = _LEAF_LIFETIME,
) -> bytes:
    """The PEM of a leaf certificate for the identity ``csr_pem`` asks for, signed by ``ca``.

    Checks, in order: the CSR parses and its signature is valid; its key is EC P-256/P-384 or
    RSA of at least 2048 bits; its SANs are exactly one URI, a valid SPIFFE ID in the CA's
    trust domain; that ID (as its ``spiffe://`` string) is in ``allowed`` or
    ``allowed(id)`` is true. Any failure raises CSRRefused and signs nothing. The subject and
    any other extension of the CSR are ignored: the leaf's content is the CA's choice.

    The leaf is valid from ``now - CLOCK_SKEW`` to ``now + valid_for``, cut short at the CA's
    own expiry (a leaf cannot outlive its issuer). Raises PKIError when the CA has expired.
    """
    now = _aware(now)
    if valid_for <= timedelta(0):
        raise ValueError(f"valid_for must be positive, got {valid_for!r}")
    if now >= ca.cert.not_valid_after_utc:
        raise PKIError(f"the CA expired at {ca.cert.not_valid_after_utc.isoformat()}")
    csr = _load_csr(csr_pem)
    identity = _requested_identity(csr)
    if identity.trust_domain != ca.trust_domain:
        raise CSRRefused(f"{identity} is not in this CA's trust domain {ca.trust_domain!r}")
    permitted = allowed(str(identity)) if callable(allowed) else str(identity) in allowed
    if not permitted:
        raise CSRRefused(f"the requester is not entitled to {identity}")
    public_key = csr.public_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shoal")]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + valid_for, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_leaf_names(identity)), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert_to_pem(cert)


def _leaf_names(identity: SpiffeId) -> list[x509.GeneralName]:
    """A leaf's SANs: its SPIFFE ID, and for a node router the DNS name of its node."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
    dns = identity.node_dns_name
    return names if dns is None else [*names, x509.DNSName(dns)]


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise CSRRefused(f"not a PEM certificate signing request: {err}") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CSRRefused(f"the CSR signature cannot be checked: {err}") from None
    if not valid:
        raise CSRRefused("the CSR signature is invalid")
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CSRRefused(f"the CSR key cannot be read: {err}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CSRRefused(f"the CSR key is on curve {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CSRRefused(f"the CSR key is RSA-{key.key_size}; use at least 2048 bits")
    else:
        raise CSRRefused(f"the CSR key type {type(key).__name__} is not supported")
    return csr


def _requested_identity(csr: x509.CertificateSigningRequest) -> SpiffeId:
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise CSRRefused("the CSR has no subjectAltName; it must name one SPIFFE ID") from None
    except ValueError as err:  # a malformed extension
        raise CSRRefused(f"the CSR's extensions cannot be read: {err}") from None
    return single_spiffe_id(names, CSRRefused)
