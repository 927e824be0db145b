"""Istio's host names for the one namespace Shoal serves (pure).

A service is named by its short name or by any longer form of its Kubernetes name —
``hello``, ``hello.default``, ``hello.default.svc``, ``hello.default.svc.cluster.local`` (any
mesh domain after ``svc``) — and all of them name the same service, as in Istio. A host of
the ``<name>.<namespace>.svc…`` form in another namespace can never reach a Shoal service, so
manifests naming one are refused (:func:`check_namespace`); any other host (``api.example.com``)
is an external name.
"""

from __future__ import annotations

from shoal.errors import ManifestError
from shoal.resources.model import NAMESPACE

__all__ = ["check_namespace", "mesh_service"]


def mesh_service(host: str) -> str | None:
    """The service a mesh host names (see the module docstring), or None for another host."""
    labels = host.lower().rstrip(".").split(".")
    if len(labels) == 1:
        return labels[0]
    if labels[1] == NAMESPACE and (len(labels) == 2 or labels[2] == "svc"):
        return labels[0]
    return None


def check_namespace(host: str, field: str) -> str:
    """``host``, unless it names a service of another namespace (``<name>.<ns>.svc…``)."""
    labels = host.lower().split(".")
    if len(labels) >= 3 and labels[2] == "svc" and labels[1] not in (NAMESPACE, "*"):
        raise ManifestError(
            f"names namespace {labels[1]}: Shoal serves one namespace, {NAMESPACE} "
            f"(write {labels[0]} or {labels[0]}.{NAMESPACE}.svc.cluster.local)",
            field=field,
            value=host,
        )
    return host
