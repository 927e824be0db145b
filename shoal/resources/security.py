"""PeerAuthentication and AuthorizationPolicy specs: Istio's field names to model values and back.

The subset of ``security.istio.io`` that Shoal implements is accepted; any other field is an
error naming its path. Fields Istio users reach for that Shoal cannot honour get a reason:
``portLevelMtls``, ``when`` conditions, the ``CUSTOM`` and ``AUDIT`` actions, namespaces (Shoal
has none), hosts and ports in operations, request principals (no JWT), IP blocks.

**Principals.** Istio writes a principal as a SPIFFE ID without its scheme,
``cluster.local/ns/<namespace>/sa/<service account>``. Shoal's identities are
``spiffe://<trust domain>/svc/<service>`` (also ``/gateway`` and ``/node/<id>``), so a Shoal
principal is ``<trust domain>/svc/<service>``; the ``spiffe://`` prefix may be written too and
is dropped, so ``spiffe://example.org/svc/hello`` and ``example.org/svc/hello`` are the same
principal. Istio's wildcards are kept: exactly ``*`` (any authenticated caller), a leading
``*`` (suffix match, ``*/svc/hello``) or a trailing ``*`` (prefix match,
``example.org/svc/*``). Istio's service-account form is kept too, in namespace ``default``
(``cluster.local/ns/default/sa/reviews``, ``*/ns/default/sa/reviews``,
``cluster.local/ns/default/sa/*``): it stands for the services whose ``service_account`` it
names (:mod:`shoal.mesh.authz`); another namespace is refused.

**Paths** are exact (``/api/v1``), prefix (``/api/*``), suffix (``*.png``) or ``*``; Istio's
path templates (``{*}``, ``{**}``) are refused. **Methods** are case-sensitive, as in Istio, and
take the same ``*`` forms.

:func:`peer_authentication_spec` and :func:`authorization_policy_spec` write the canonical spec
(defaults omitted, principals without ``spiffe://``), which the parsers read to an equal value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from shoal.errors import ManifestError
from shoal.identity.spiffe import SCHEME, InvalidSpiffeId, parse_spiffe
from shoal.resources.fields import Section, choice, labels, list_of, string
from shoal.resources.model import (
    NAMESPACE,
    AuthorizationAction,
    AuthorizationPolicy,
    MtlsMode,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
)

__all__ = [
    "authorization_policy_spec",
    "parse_authorization_policy",
    "parse_peer_authentication",
    "peer_authentication_spec",
]

MTLS_MODES: Mapping[str, MtlsMode] = MappingProxyType(
    {"UNSET": "UNSET", "DISABLE": "DISABLE", "PERMISSIVE": "PERMISSIVE", "STRICT": "STRICT"}
)
ACTIONS: Mapping[str, AuthorizationAction] = MappingProxyType({"ALLOW": "ALLOW", "DENY": "DENY"})

# Istio fields Shoal knows but does not implement, with the reason given to the user.
_UNSUPPORTED_SPEC = {
    "targetRef": "Shoal selects workloads by selector.matchLabels only",
    "targetRefs": "Shoal selects workloads by selector.matchLabels only",
    "provider": "CUSTOM authorization providers are not supported by Shoal",
}
_UNSUPPORTED_SOURCE = {
    "namespaces": "Shoal has no namespaces; match callers by principals",
    "notNamespaces": "Shoal has no namespaces; match callers by notPrincipals",
    "serviceAccounts": "Shoal has no service accounts; match callers by principals",
    "notServiceAccounts": "Shoal has no service accounts; match callers by notPrincipals",
    "requestPrincipals": "request (JWT) principals are not supported by Shoal",
    "notRequestPrincipals": "request (JWT) principals are not supported by Shoal",
    "ipBlocks": "IP blocks are not supported by Shoal; match callers by principals",
    "notIpBlocks": "IP blocks are not supported by Shoal; match callers by principals",
    "remoteIpBlocks": "IP blocks are not supported by Shoal; match callers by principals",
    "notRemoteIpBlocks": "IP blocks are not supported by Shoal; match callers by principals",
}
_UNSUPPORTED_OPERATION = {
    "hosts": "Shoal matches operations by methods and paths only (a policy's selector "
    "already picks the workload)",
    "notHosts": "Shoal matches operations by methods and paths only",
    "ports": "Shoal matches operations by methods and paths only",
    "notPorts": "Shoal matches operations by methods and paths only",
}

# What users write in a PeerAuthentication that belongs elsewhere.
_PEER_HINTS = {
    "tls": "not a PeerAuthentication field (in Istio either): for mesh mTLS write "
    "spec.mtls.mode (STRICT, PERMISSIVE or DISABLE); to serve TLS at the edge with a "
    "certificate and key, give them to the gateway (shoal up or shoal gateway: "
    "--tls-port PORT --cert FILE --key FILE), as an Istio Gateway server with tls.mode SIMPLE",
}

T = TypeVar("T")

_PRINCIPAL_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_ISTIO_PRINCIPAL = re.compile(r"(^|/)ns/[^/]*/sa(/|$)")
_ACCOUNT_NAME = r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"  # a Kubernetes service account's
_EXACT_ACCOUNT = re.compile(rf"[a-z0-9._-]+/ns/(?P<ns>[^/]+)/sa/{_ACCOUNT_NAME}")
_SUFFIX_ACCOUNT = re.compile(rf"/ns/(?P<ns>[^/]+)/sa/{_ACCOUNT_NAME}")
_PREFIX_ACCOUNT = re.compile(r"[a-z0-9._-]+/ns/(?P<ns>[^/]+)/sa/")
_METHOD_CHARS = re.compile(r"[!#$%&'+\-.^_`|~0-9A-Za-z]+")
_PATH_CHARS = re.compile(r"[^\s?#*{}]+")


def _reject_unsupported(section: Section, unsupported: dict[str, str]) -> None:
    for key, reason in unsupported.items():
        if section.has(key):
            raise ManifestError(reason, field=section.at(key), value=section.raw(key))


def _match_labels(value: object, field: str) -> tuple[tuple[str, str], ...]:
    return Section(value, field, ("matchLabels",)).get("matchLabels", labels, ())


# ---------------------------------------------------------------------------------------------
# PeerAuthentication


def parse_peer_authentication(name: str, value: object) -> PeerAuthentication:
    """The PeerAuthentication named ``name`` whose ``spec`` is ``value``."""
    spec = Section(value, "spec", ("selector", "mtls", "portLevelMtls"), _PEER_HINTS)
    if spec.has("portLevelMtls"):
        raise ManifestError(
            "not supported by Shoal: the mode applies to every port of the workload",
            field=spec.at("portLevelMtls"),
            value=spec.raw("portLevelMtls"),
        )
    mtls: MtlsMode = spec.get("mtls", _mtls, "UNSET")
    return PeerAuthentication(
        name=name, match_labels=spec.get("selector", _match_labels, ()), mtls_mode=mtls
    )


def _mtls(value: object, field: str) -> MtlsMode:
    return Section(value, field, ("mode",)).get("mode", _mtls_mode, "UNSET")


def _mtls_mode(value: object, field: str) -> MtlsMode:
    return choice(MTLS_MODES)(value, field)


def peer_authentication_spec(policy: PeerAuthentication) -> dict[str, object]:
    """The canonical ``spec`` of a PeerAuthentication, in Istio's field names."""
    spec: dict[str, object] = {}
    if policy.match_labels:
        spec["selector"] = {"matchLabels": dict(policy.match_labels)}
    if policy.mtls_mode != "UNSET":
        spec["mtls"] = {"mode": policy.mtls_mode}
    return spec


# ---------------------------------------------------------------------------------------------
# AuthorizationPolicy


def parse_authorization_policy(name: str, value: object) -> AuthorizationPolicy:
    """The AuthorizationPolicy named ``name`` whose ``spec`` is ``value``.

    As in Istio, ``from``, ``to`` and each ``source``/``operation`` must not be empty when
    written, and a policy without ``rules`` matches nothing.
    """
    spec = Section(value, "spec", ("selector", "action", "rules", *_UNSUPPORTED_SPEC))
    _reject_unsupported(spec, _UNSUPPORTED_SPEC)
    return AuthorizationPolicy(
        name=name,
        match_labels=spec.get("selector", _match_labels, ()),
        action=spec.get("action", _action, "ALLOW"),
        rules=spec.get("rules", list_of(_rule), ()),
    )


def _action(value: object, field: str) -> AuthorizationAction:
    if value in ("CUSTOM", "AUDIT"):
        raise ManifestError(
            f"action {value} is not supported by Shoal; use ALLOW or DENY", field=field, value=value
        )
    return choice(ACTIONS)(value, field)


def _rule(value: object, field: str) -> Rule:
    rule = Section(value, field, ("from", "to", "when"))
    if rule.has("when"):
        raise ManifestError(
            "conditions are not supported by Shoal; match on from.source and to.operation",
            field=rule.at("when"),
            value=rule.raw("when"),
        )
    return Rule(
        from_=rule.get("from", list_of(_from, min_items=1), ()),
        to=rule.get("to", list_of(_to, min_items=1), ()),
    )


def _from(value: object, field: str) -> Source:
    return Section(value, field, ("source",)).need("source", _source)


def _to(value: object, field: str) -> Operation:
    return Section(value, field, ("operation",)).need("operation", _operation)


def _source(value: object, field: str) -> Source:
    source = Section(value, field, ("principals", "notPrincipals", *_UNSUPPORTED_SOURCE))
    _reject_unsupported(source, _UNSUPPORTED_SOURCE)
    result = Source(
        principals=source.get("principals", list_of(_principal, min_items=1), ()),
        not_principals=source.get("notPrincipals", list_of(_principal, min_items=1), ()),
    )
    if result == Source():
        raise ManifestError("must set principals or notPrincipals", field=field, value=value)
    return result


def _operation(value: object, field: str) -> Operation:
    allowed = ("methods", "notMethods", "paths", "notPaths", *_UNSUPPORTED_OPERATION)
    operation = Section(value, field, allowed)
    _reject_unsupported(operation, _UNSUPPORTED_OPERATION)
    methods = list_of(_method, min_items=1)
    paths = list_of(_path, min_items=1)
    result = Operation(
        methods=operation.get("methods", methods, ()),
        not_methods=operation.get("notMethods", methods, ()),
        paths=operation.get("paths", paths, ()),
        not_paths=operation.get("notPaths", paths, ()),
    )
    if result == Operation():
        raise ManifestError(
            "must set methods, notMethods, paths or notPaths", field=field, value=value
        )
    return result


def _wildcard_body(value: str) -> str:
    """``value`` without its one leading or trailing ``*`` ("" for exactly ``*``)."""
    if value == "*":
        return ""
    if value.startswith("*"):
        return value[1:]
    if value.endswith("*"):
        return value[:-1]
    return value


_WILDCARD_HINT = "a '*' may only stand alone, lead or trail"


def _principal(value: object, field: str) -> str:
    """A principal in canonical form: no ``spiffe://``, checked as a SPIFFE ID when exact."""
    principal = string(value, field)
    if principal.startswith(SCHEME):
        principal = principal[len(SCHEME) :]
    body = _wildcard_body(principal)
    if "*" in body:
        raise ManifestError(f"invalid principal: {_WILDCARD_HINT}", field=field, value=value)
    if _ISTIO_PRINCIPAL.search(body):
        return _account_principal(principal, body, field)
    if body == principal:  # exact: must be a whole SPIFFE ID
        try:
            parse_spiffe(SCHEME + principal)
        except InvalidSpiffeId as err:
            raise ManifestError(
                f"invalid principal: {err.reason}", field=field, value=value
            ) from None
    elif body and not _PRINCIPAL_CHARS.fullmatch(body):
        raise ManifestError(
            "invalid principal: only letters, digits, '.', '-', '_' and '/' around the '*'",
            field=field,
            value=value,
        )
    return principal


def _account_principal(principal: str, body: str, field: str) -> str:
    """An Istio service-account principal Shoal can map to its services (see
    :mod:`shoal.mesh.authz`): ``<td>/ns/default/sa/<account>``, ``*/ns/default/sa/<account>``
    or ``<td>/ns/default/sa/*``."""
    if principal.startswith("*"):
        form = _SUFFIX_ACCOUNT
    elif principal.endswith("*"):
        form = _PREFIX_ACCOUNT
    else:
        form = _EXACT_ACCOUNT
    found = form.fullmatch(body)
    if found is None:
        raise ManifestError(
            "not a service-account principal Shoal can map: write "
            "<trust-domain>/ns/default/sa/<account> (the services whose service_account it "
            "is), */ns/default/sa/<account>, <trust-domain>/ns/default/sa/*, or a Shoal "
            "principal <trust-domain>/svc/<service>",
            field=field,
            value=principal,
        )
    if found["ns"] != NAMESPACE:
        raise ManifestError(
            f"names namespace {found['ns']}: Shoal serves one namespace, {NAMESPACE}",
            field=field,
            value=principal,
        )
    return principal


def _method(value: object, field: str) -> str:
    method = string(value, field)
    body = _wildcard_body(method)
    if body and not _METHOD_CHARS.fullmatch(body):
        raise ManifestError(
            f"must be an HTTP method such as GET ({_WILDCARD_HINT})", field=field, value=value
        )
    return method


def _path(value: object, field: str) -> str:
    path = string(value, field)
    if "{" in path or "}" in path:
        raise ManifestError(
            "path templates ({*}, {**}) are not supported by Shoal; use '/prefix/*' or '*suffix'",
            field=field,
            value=value,
        )
    body = _wildcard_body(path)
    if body and not _PATH_CHARS.fullmatch(body):
        raise ManifestError(
            f"must be a path without spaces, query or fragment ({_WILDCARD_HINT})",
            field=field,
            value=value,
        )
    if not path.startswith(("/", "*")):
        raise ManifestError(
            "must start with '/' (or '*' for a suffix match)", field=field, value=value
        )
    return path


def authorization_policy_spec(policy: AuthorizationPolicy) -> dict[str, object]:
    """The canonical ``spec`` of an AuthorizationPolicy, in Istio's field names."""
    spec: dict[str, object] = {}
    if policy.match_labels:
        spec["selector"] = {"matchLabels": dict(policy.match_labels)}
    if policy.action != "ALLOW":
        spec["action"] = policy.action
    if policy.rules:
        spec["rules"] = [_rule_doc(rule) for rule in policy.rules]
    return spec


def _rule_doc(rule: Rule) -> dict[str, object]:
    out: dict[str, object] = {}
    if rule.from_:
        out["from"] = [{"source": _source_doc(source)} for source in rule.from_]
    if rule.to:
        out["to"] = [{"operation": _operation_doc(operation)} for operation in rule.to]
    return out


def _source_doc(source: Source) -> dict[str, object]:
    return _lists(("principals", source.principals), ("notPrincipals", source.not_principals))


def _operation_doc(operation: Operation) -> dict[str, object]:
    return _lists(
        ("methods", operation.methods),
        ("notMethods", operation.not_methods),
        ("paths", operation.paths),
        ("notPaths", operation.not_paths),
    )


def _lists(*fields: tuple[str, tuple[str, ...]]) -> dict[str, object]:
    return {key: list(values) for key, values in fields if values}
