"""The mesh PKI's vocabulary, pure: its errors, keys, PEM, and what a certificate says.

No I/O. Issuing certificates (the CA, CSRs, signing) is :mod:`shoal.identity.issuance`; using
them (verifying a presented chain, TLS contexts, key files) is :mod:`shoal.identity.certs`.

Errors::

    ShoalError
    └── PKIError                 exit 5: a PKI operation failed
        ├── CSRRefused           exit 2: a CSR will not be signed (the requester's fault)
        └── CertificateRejected  a certificate or bundle failed verification (the peer's fault)

``cryptography`` exceptions (``ValueError`` and ``UnsupportedAlgorithm`` from loaders) do not
leave this module or :mod:`shoal.identity.issuance`, nor do those of
:mod:`shoal.identity.certs` (``ssl.SSLError``, ``VerificationError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.errors import ShoalError
from shoal.identity.spiffe import InvalidSpiffeId, SpiffeId, parse_spiffe

__all__ = [
    "CSRRefused",
    "CertificateRejected",
    "JoinRefused",
    "PKIError",
    "PrivateKey",
    "bundle_pem",
    "cert_from_pem",
    "cert_to_pem",
    "issuer_key_id",
    "key_from_pem",
    "key_id",
    "key_to_pem",
    "new_key",
    "parse_bundle",
    "renew_at",
    "single_spiffe_id",
    "spiffe_id_of",
]

PrivateKey = ec.EllipticCurvePrivateKey
"""The key type Shoal makes (ECDSA P-256). CSRs may also carry P-384 or RSA >= 2048 keys."""


class PKIError(ShoalError):
    """A PKI operation failed: a CA that cannot sign, a key that does not match its cert."""

    exit_code = 5


class CSRRefused(PKIError):
    """A CSR will not be signed: bad signature or key, no single valid SPIFFE ID, an identity in
    another trust domain or one the requester is not entitled to. The requester's fault."""

    exit_code = 2


class JoinRefused(PKIError):
    """The CA will not admit a requester it never admitted: no join token, or one that is
    unknown, wrong, expired or used up. Asking again with the same token cannot help."""

    exit_code = 2


class CertificateRejected(PKIError):
    """A certificate failed verification (expired, not yet valid, unknown issuer, bad SAN), or
    PEM text is not what it should be. The presenter's fault."""


# ---------------------------------------------------------------------------------------------
# Keys and PEM


def new_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    """The unencrypted PKCS#8 PEM of ``key`` (store it with mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes) -> PrivateKey:
    """The EC private key in ``pem``; raises PKIError when it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise PKIError(f"not a PEM private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"expected an EC private key, got {type(key).__name__}")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """The PEM of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(pem: bytes) -> x509.Certificate:
    """The one certificate in ``pem``; raises CertificateRejected otherwise."""
    certs = parse_bundle(pem)
    if len(certs) != 1:
        raise CertificateRejected(f"expected one certificate, found {len(certs)}")
    return certs[0]


def bundle_pem(roots: Sequence[x509.Certificate]) -> bytes:
    """A trust bundle: the PEMs of ``roots`` concatenated, in order."""
    return b"".join(cert_to_pem(root) for root in roots)


def parse_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle, in order; raises CertificateRejected on bad PEM."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise CertificateRejected(f"not a PEM certificate bundle: {err}") from None


# ---------------------------------------------------------------------------------------------
# What a certificate says


def single_spiffe_id(names: Sequence[x509.GeneralName], error: type[PKIError]) -> SpiffeId:
    """The SPIFFE ID of SANs that must be exactly one URI; ``error`` otherwise."""
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        shown = ", ".join(f"{type(name).__name__}({name.value!r})" for name in names)
        raise error(f"exactly one SAN, a SPIFFE URI, is required; found [{shown}]")
    try:
        return parse_spiffe(names[0].value)
    except InvalidSpiffeId as err:
        raise error(str(err)) from None


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of ``cert`` (its only URI SAN; a DNS name may stand beside it, as a node
    router's names its node); raises CertificateRejected otherwise."""
    try:
        names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise CertificateRejected("the certificate has no subjectAltName") from None
    except ValueError as err:
        raise CertificateRejected(f"the certificate's extensions cannot be read: {err}") from None
    uris = [name for name in names if isinstance(name, x509.UniformResourceIdentifier)]
    return single_spiffe_id(uris or names, CertificateRejected)


def renew_at(cert: x509.Certificate, fraction: float = 2 / 3) -> datetime:
    """When to renew ``cert``: ``fraction`` of the way through its validity (aware UTC)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    start = cert.not_valid_before_utc
    return start + (cert.not_valid_after_utc - start) * fraction


def key_id(cert: x509.Certificate) -> str:
    """The certificate's subject key identifier, hex: how roots are named in reports."""
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return ski.digest.hex()[:16]


def issuer_key_id(cert: x509.Certificate) -> str:
    """The key identifier of the certificate's issuer (its AKI), hex, as :func:`key_id`."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return (aki.key_identifier or b"").hex()[:16]
