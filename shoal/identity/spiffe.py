"""SPIFFE IDs: who a mesh component is.

Every Shoal workload is named by a SPIFFE ID (https://spiffe.io, "SPIFFE-ID" standard)::

    spiffe://<trust-domain>/svc/<service>     a service's instances (and its outbound listener)
    spiffe://<trust-domain>/gateway           the edge gateway
    spiffe://<trust-domain>/node/<node-id>    a node's router and agent

The ID travels as the one URI SAN of an X.509 leaf certificate (:mod:`shoal.identity.issuance`).
Parsing is strict, as the standard asks: the scheme is ``spiffe`` in lower case; the trust
domain is 1-255 characters of ``[a-z0-9.-_]``; the path is empty or ``/``-separated non-empty
segments of ``[A-Za-z0-9.-_]`` that are not ``.`` or ``..``; no user info, port, query, fragment
or percent-encoding; 2048 bytes at most in all. A string that breaks a rule is refused, never
repaired, so that two spellings can never name one identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.errors import UserError

__all__ = [
    "SCHEME",
    "InvalidSpiffeId",
    "SpiffeId",
    "gateway_id",
    "node_id",
    "parse_spiffe",
    "peer_identity",
    "service_id",
]

SCHEME = "spiffe://"
MAX_LENGTH = 2048
MAX_TRUST_DOMAIN = 255

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeId(UserError):
    """A string is not a valid SPIFFE ID; ``value`` is the string, ``reason`` the broken rule.

    It is a UserError because IDs written by people (manifests, flags) are the usual source;
    code reading IDs from untrusted peers (certificates, CSRs) turns it into its own error.
    """

    def __init__(self, reason: str, value: str) -> None:
        self.reason = reason
        self.value = value
        super().__init__(f"invalid SPIFFE ID {value!r}: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpiffeId:
    """A valid SPIFFE ID: ``spiffe://{trust_domain}{path}``; ``path`` is "" or starts with "/".

    The constructor checks every rule, so an instance is always valid; ``str()`` is the URI.
    """

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        uri = f"{SCHEME}{self.trust_domain}{self.path}"
        _check_trust_domain(self.trust_domain, uri)
        _check_path(self.path, uri)
        if len(uri.encode()) > MAX_LENGTH:
            raise InvalidSpiffeId(f"longer than {MAX_LENGTH} bytes", uri)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments: ``("svc", "hello")`` for ``spiffe://td/svc/hello``."""
        return tuple(self.path.split("/")[1:]) if self.path else ()

    @property
    def service(self) -> str | None:
        """The service name of a ``/svc/<service>`` ID, else None."""
        segments = self.segments
        return segments[1] if len(segments) == 2 and segments[0] == "svc" else None

    @property
    def node_dns_name(self) -> str | None:
        """``<node>.node.<trust domain>`` for a ``/node/<node>`` ID whose parts are DNS labels
        (what a node router's certificate names besides its SPIFFE ID, so that plain TLS
        clients such as ``curl --resolve`` can check they reached that node), else None."""
        segments = self.segments
        if len(segments) != 2 or segments[0] != "node":
            return None
        name = f"{segments[1]}.node.{self.trust_domain}".lower()
        labels_ok = all(_DNS_LABEL.fullmatch(label) for label in name.split("."))
        return name if labels_ok and len(name) <= 253 else None


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _check_trust_domain(trust_domain: str, uri: str) -> None:
    if not trust_domain:
        raise InvalidSpiffeId("the trust domain is empty", uri)
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        raise InvalidSpiffeId(f"the trust domain is longer than {MAX_TRUST_DOMAIN}", uri)
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidSpiffeId(
            "the trust domain may hold only lower-case letters, digits, '.', '-' and '_'", uri
        )


def _check_path(path: str, uri: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise InvalidSpiffeId("the path must start with '/'", uri)
    for segment in path[1:].split("/"):
        if not segment:
            raise InvalidSpiffeId("the path has an empty segment (or a trailing '/')", uri)
        if segment in (".", ".."):
            raise InvalidSpiffeId("the path has a '.' or '..' segment", uri)
        if not _SEGMENT.fullmatch(segment):
            raise InvalidSpiffeId(
                "path segments may hold only letters, digits, '.', '-' and '_' "
                "(no percent-encoding, query or fragment)",
                uri,
            )


def parse_spiffe(uri: str) -> SpiffeId:
    """The SPIFFE ID ``uri`` spells; raises :class:`InvalidSpiffeId` naming the broken rule."""
    if len(uri.encode()) > MAX_LENGTH:
        raise InvalidSpiffeId(f"longer than {MAX_LENGTH} bytes", uri)
    if not uri.startswith(SCHEME):
        raise InvalidSpiffeId("must start with 'spiffe://' (lower case)", uri)
    rest = uri[len(SCHEME) :]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if ":" in trust_domain or "@" in trust_domain:
        raise InvalidSpiffeId("the trust domain may not carry a port or user info", uri)
    return SpiffeId(trust_domain=trust_domain, path=path)


def service_id(trust_domain: str, name: str) -> SpiffeId:
    """The identity of service ``name``: ``spiffe://<trust_domain>/svc/<name>``."""
    return SpiffeId(trust_domain=trust_domain, path=f"/svc/{name}")


def gateway_id(trust_domain: str) -> SpiffeId:
    """The identity of the edge gateway: ``spiffe://<trust_domain>/gateway``."""
    return SpiffeId(trust_domain=trust_domain, path="/gateway")


def node_id(trust_domain: str, node: str) -> SpiffeId:
    """The identity of node ``node`` (its router and agent): ``spiffe://<td>/node/<node>``."""
    return SpiffeId(trust_domain=trust_domain, path=f"/node/{node}")


def peer_identity(peercert: Mapping[str, object] | None) -> SpiffeId | None:
    """The SPIFFE ID in what ``ssl.SSLSocket.getpeercert()`` returned, or None.

    None when there is no verified certificate (``None`` or ``{}``), when it carries no URI SAN
    or more than one (a SPIFFE SVID has exactly one), or when that URI is not a valid SPIFFE ID.
    The chain must already have been verified by the TLS layer; this only reads the name.
    """
    if not peercert:
        return None
    names = peercert.get("subjectAltName")
    if not isinstance(names, tuple | list):
        return None
    uris = [
        entry[1]
        for entry in names
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI"
    ]
    if len(uris) != 1 or not isinstance(uris[0], str):
        return None
    try:
        return parse_spiffe(uris[0])
    except InvalidSpiffeId:
        return None
