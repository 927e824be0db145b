"""Service specs: Shoal's own kind to a :class:`~shoal.resources.model.Service` and back.

A Service runs either an ASGI ``app`` or a ``command``, with its environment, labels, weight,
scaling bounds, active health check and node selector. Its revision is the name given in the
spec or, when there is none, a hash of what the revision runs (:func:`revision_spec`), so that
re-applying an unchanged spec names the same revision and any change to what runs names a new
one. :func:`service_spec` writes the canonical spec back (defaults omitted, the revision always
written), and :func:`parse_service` reads it to an equal value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from typing import cast

from shoal.errors import ManifestError
from shoal.resources.fields import (
    Section,
    boolean,
    dns_label,
    entries,
    integer,
    join,
    labels,
    list_of,
    matching,
    one_of,
    positive_duration,
    put,
    put_duration,
    string,
)
from shoal.resources.model import (
    DEFAULT_ACCOUNT,
    PROTOCOLS,
    HealthCheck,
    Protocol,
    Scale,
    Service,
)

__all__ = ["RESERVED_LABELS", "parse_service", "revision_spec", "service_spec"]

RESERVED_LABELS = ("app", "version")

_SCALE = Scale()
_HEALTH = HealthCheck()
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_app = matching(
    re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*"), "'module:attribute' of an ASGI app"
)
_ENV_NAME = re.compile(_IDENT)
_health_path = matching(re.compile(r"/\S*"), "a path starting with '/'")


def parse_service(name: str, value: object, base_dir: str | None) -> Service:
    """The Service named ``name`` whose ``spec`` is ``value``; a relative ``workdir`` is resolved
    against ``base_dir`` (kept as written when that is None)."""
    spec = Section(
        value,
        "spec",
        (
            "app",
            "command",
            "revision",
            "workdir",
            "env",
            "labels",
            "weight",
            "scale",
            "health",
            "node_selector",
            "protocol",
            "service_account",
            "tags",
        ),
    )
    app = spec.get("app", _app)
    command = spec.get("command", list_of(string, min_items=1))
    if (app is None) == (command is None):
        raise ManifestError("set exactly one of app or command", field="spec")
    workdir = spec.get("workdir", string)
    if workdir is not None and base_dir is not None and not os.path.isabs(workdir):
        workdir = os.path.normpath(os.path.join(base_dir, workdir))
    service = Service(
        name=name,
        revision="",
        app=app,
        command=command,
        workdir=workdir,
        env=spec.get("env", _env, ()),
        labels=spec.get("labels", _service_labels, ()),
        weight=spec.get("weight", integer(1), 1),
        scale=spec.get("scale", _scale, _SCALE),
        health=spec.get("health", _health, _HEALTH),
        node_selector=spec.get("node_selector", labels, ()),
        protocol=cast(Protocol, spec.get("protocol", one_of(PROTOCOLS), "http")),
        service_account=spec.get("service_account", dns_label, DEFAULT_ACCOUNT),
        tags=tuple(sorted(set(spec.get("tags", list_of(dns_label)) or ()))),
    )
    revision = spec.get("revision", dns_label)
    return replace(service, revision=revision or _revision_hash(service))


def revision_spec(service: Service) -> dict[str, object]:
    """What makes a revision: the canonical spec without ``revision``, ``scale``,
    ``node_selector`` and ``tags``.

    Scaling bounds, the node selector and traffic tags say how many instances run, where, and
    how they are reached, not what they run, so none is part of a revision: each changes in
    place (``shoal scale``, ``shoal tag``, or applying the same revision with other values),
    and a changed selector moves the revision's instances to the nodes it now matches without
    a rollout or a new revision name. Anything else changed makes a new revision.
    """
    spec = service_spec(service, with_revision=False)
    spec.pop("scale", None)
    spec.pop("node_selector", None)
    spec.pop("tags", None)
    return spec


def _revision_hash(service: Service) -> str:
    """The first 10 hex digits of the SHA-256 of :func:`revision_spec`."""
    canonical = json.dumps(revision_spec(service), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def _env(value: object, field: str) -> tuple[tuple[str, str], ...]:
    """Environment variables; numbers and booleans (YAML reads ``8080`` as an int) become text."""
    result = []
    for key, item, path in entries(value, field):
        if not _ENV_NAME.fullmatch(key):
            raise ManifestError("must be an environment variable name", field=path, value=key)
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise ManifestError("must be a string, number or boolean", field=path, value=item)
        result.append((key, item))
    return tuple(sorted(result))


def _service_labels(value: object, field: str) -> tuple[tuple[str, str], ...]:
    result = labels(value, field)
    for key, _ in result:
        if key in RESERVED_LABELS:
            raise ManifestError(
                "reserved label: Shoal sets app to the service name and version to the revision",
                field=join(field, key),
                value=key,
            )
    return result


def _scale(value: object, field: str) -> Scale:
    scale = Section(value, field, ("min", "max", "target_concurrency", "idle_timeout"))
    minimum = scale.get("min", integer(0), _SCALE.min)
    maximum = scale.get("max", integer(1), _SCALE.max)
    if maximum < minimum:
        raise ManifestError(
            f"must be at least scale.min ({minimum})", field=scale.at("max"), value=maximum
        )
    return Scale(
        min=minimum,
        max=maximum,
        target_concurrency=scale.get("target_concurrency", integer(1), _SCALE.target_concurrency),
        idle_timeout=scale.get("idle_timeout", positive_duration, _SCALE.idle_timeout),
    )


def _health(value: object, field: str) -> HealthCheck:
    health = Section(
        value,
        field,
        ("path", "grpc", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"),
    )
    path, grpc = health.get("path", _health_path), health.get("grpc", boolean, False)
    if path is not None and grpc:
        raise ManifestError("set path (an HTTP GET) or grpc: true, not both", field=field)
    return HealthCheck(
        path=path,
        grpc=grpc,
        interval=health.get("interval", positive_duration, _HEALTH.interval),
        timeout=health.get("timeout", positive_duration, _HEALTH.timeout),
        healthy_threshold=health.get("healthy_threshold", integer(1), _HEALTH.healthy_threshold),
        unhealthy_threshold=health.get(
            "unhealthy_threshold", integer(1), _HEALTH.unhealthy_threshold
        ),
    )


def service_spec(service: Service, *, with_revision: bool = True) -> dict[str, object]:
    """The canonical ``spec`` of a Service; ``revision`` left out when ``with_revision`` is off."""
    spec: dict[str, object] = {}
    if with_revision:
        spec["revision"] = service.revision
    put(spec, "app", service.app)
    put(spec, "command", None if service.command is None else list(service.command))
    put(spec, "workdir", service.workdir)
    put(spec, "env", dict(service.env), {})
    put(spec, "labels", dict(service.labels), {})
    put(spec, "weight", service.weight, 1)
    put(spec, "protocol", service.protocol, "http")
    put(spec, "service_account", service.service_account, DEFAULT_ACCOUNT)
    scale: dict[str, object] = {}
    put(scale, "min", service.scale.min, _SCALE.min)
    put(scale, "max", service.scale.max, _SCALE.max)
    put(scale, "target_concurrency", service.scale.target_concurrency, _SCALE.target_concurrency)
    put_duration(scale, "idle_timeout", service.scale.idle_timeout, _SCALE.idle_timeout)
    put(spec, "scale", scale, {})
    health: dict[str, object] = {}
    put(health, "path", service.health.path)
    put(health, "grpc", service.health.grpc, False)
    put_duration(health, "interval", service.health.interval, _HEALTH.interval)
    put_duration(health, "timeout", service.health.timeout, _HEALTH.timeout)
    put(health, "healthy_threshold", service.health.healthy_threshold, _HEALTH.healthy_threshold)
    put(
        health,
        "unhealthy_threshold",
        service.health.unhealthy_threshold,
        _HEALTH.unhealthy_threshold,
    )
    put(spec, "health", health, {})
    put(spec, "node_selector", dict(service.node_selector), {})
    put(spec, "tags", list(service.tags), [])
    return spec
