"""Manifests to model values and back: the only way a :mod:`shoal.resources.model` object is built.

A manifest is YAML, one Kubernetes-style document per resource (``apiVersion``, ``kind``,
``metadata.name``, ``spec``), documents separated by ``---``. Every field is validated; an
invalid one raises :class:`~shoal.errors.ManifestError` naming the file, the 0-based index of the
document in the file ("document 1" is the second), the dotted field path and the bad value. A
field Shoal does not implement is an error, never ignored.

:func:`load_files` validates every document of every file before returning anything, so a caller
applies all or nothing. When several documents are wrong it raises one ManifestError whose
message lists every error, one per line (each line the rendering of one error); with a single
error it raises that error itself, with its file, document, field and value set.

:func:`to_document` writes the canonical document of a resource (fields at their defaults left
out, weights and revisions always written); ``parse_document(to_document(r)) == r``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import replace

import yaml

from shoal.errors import ManifestError, UserError
from shoal.resources.destination_rule import destination_rule_spec, parse_destination_rule
from shoal.resources.fields import (
    Section,
    dns_label,
    dns_subdomain,
    entries,
    integer,
    join,
    labels,
    list_of,
    matching,
    parse_duration,
    positive_duration,
    put,
    put_duration,
    section,
    string,
    string_map,
)
from shoal.resources.model import (
    ISTIO_APIS,
    KINDS,
    SECURITY_APIS,
    SERVICE_API,
    DestinationRule,
    HealthCheck,
    PeerAuthentication,
    Resource,
    Scale,
    Service,
    VirtualService,
)
from shoal.resources.security import (
    authorization_policy_spec,
    parse_authorization_policy,
    parse_peer_authentication,
    peer_authentication_spec,
)
from shoal.resources.virtual_service import parse_virtual_service, virtual_service_spec

__all__ = ["load_files", "parse_document", "parse_duration", "parse_text", "to_document"]

RESERVED_LABELS = ("app", "version")

_SCALE = Scale()
_HEALTH = HealthCheck()
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_app = matching(
    re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*"), "'module:attribute' of an ASGI app"
)
_ENV_NAME = re.compile(_IDENT)
_health_path = matching(re.compile(r"/\S*"), "a path starting with '/'")


# ---------------------------------------------------------------------------------------------
# Documents


def parse_document(doc: object, *, base_dir: str | None = None) -> Resource:
    """The resource one loaded YAML document describes.

    ``base_dir`` is the directory a relative ``spec.workdir`` of a Service is resolved against.
    Raises ManifestError naming the field path and value (the caller adds file and document).
    """
    if not isinstance(doc, dict):
        raise ManifestError("a document must be a mapping", value=doc)
    top = Section(doc, "", ("apiVersion", "kind", "metadata", "spec"))
    kind = top.need("kind", string)
    if kind not in KINDS:
        raise ManifestError(
            f"unknown kind; expected one of {', '.join(KINDS)}", field="kind", value=kind
        )
    api_version = top.need("apiVersion", string)
    expected: tuple[str, ...] = ISTIO_APIS
    if kind == "Service":
        expected = (SERVICE_API,)
    elif kind in ("PeerAuthentication", "AuthorizationPolicy"):
        expected = SECURITY_APIS
    if api_version not in expected:
        raise ManifestError(
            f"{kind} needs apiVersion {' or '.join(expected)}",
            field="apiVersion",
            value=api_version,
        )
    metadata = top.need("metadata", section(("name", "namespace", "labels", "annotations")))
    # namespace, labels and annotations are accepted (manifests often carry them) but not used.
    metadata.get("namespace", string)
    metadata.get("labels", labels)
    metadata.get("annotations", string_map)
    if kind == "Service":
        name = metadata.need("name", dns_label)
        return _parse_service(name, top.need("spec", _unparsed), base_dir)
    name = metadata.need("name", dns_subdomain)
    if kind == "VirtualService":
        return parse_virtual_service(name, top.need("spec", _unparsed))
    if kind == "DestinationRule":
        return parse_destination_rule(name, top.need("spec", _unparsed))
    # An empty security spec is meaningful (Istio's "allow-nothing" policy is ``spec: {}``).
    spec = {} if top.raw("spec") is None else top.raw("spec")
    if kind == "PeerAuthentication":
        return parse_peer_authentication(name, spec)
    return parse_authorization_policy(name, spec)


def _unparsed(value: object, field: str) -> object:
    return value


def to_document(resource: Resource) -> dict[str, object]:
    """The canonical manifest of ``resource``: plain JSON-able values that parse back to it."""
    if isinstance(resource, Service):
        api_version, spec = SERVICE_API, _service_spec(resource)
    elif isinstance(resource, VirtualService):
        api_version, spec = ISTIO_APIS[0], virtual_service_spec(resource)
    elif isinstance(resource, DestinationRule):
        api_version, spec = ISTIO_APIS[0], destination_rule_spec(resource)
    elif isinstance(resource, PeerAuthentication):
        api_version, spec = SECURITY_APIS[0], peer_authentication_spec(resource)
    else:
        api_version, spec = SECURITY_APIS[0], authorization_policy_spec(resource)
    return {
        "apiVersion": api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.name},
        "spec": spec,
    }


def parse_text(text: str, *, file: str = "<string>", base_dir: str | None = None) -> list[Resource]:
    """The resources of a multi-document YAML string; empty documents are skipped.

    Errors name ``file`` and the 0-based document index; several are reported together as in
    :func:`load_files`. YAML syntax errors are ManifestErrors with the line and column.
    """
    parsed, errors = _parse_stream(text, file, base_dir)
    _raise_errors(errors)
    return [resource for _, resource in parsed]


def load_files(paths: Sequence[str]) -> list[Resource]:
    """The resources of all ``paths`` (``-`` is stdin), in order, once all of them are valid.

    A relative ``workdir`` is resolved against its file's directory (the current one for stdin).
    An unreadable file is a UserError naming it. Invalid documents, and two documents defining
    the same kind and key, raise ManifestError (all errors listed, one per line).
    """
    sources = [_read(path) for path in paths]
    resources: list[Resource] = []
    errors: list[ManifestError] = []
    defined: dict[tuple[str, str], tuple[str, int]] = {}
    for file, text, base_dir in sources:
        parsed, file_errors = _parse_stream(text, file, base_dir)
        for index, resource in parsed:
            origin = defined.setdefault((resource.kind, resource.key), (file, index))
            if origin != (file, index):
                file_errors.append(
                    ManifestError(
                        f"{resource.kind} {resource.key!r} is already defined in {origin[0]}, "
                        f"document {origin[1]}",
                        file=file,
                        document=index,
                        field="metadata.name",
                    )
                )
            resources.append(resource)
        errors.extend(sorted(file_errors, key=lambda error: error.document or 0))
    _raise_errors(errors)
    return resources


def _read(path: str) -> tuple[str, str, str]:
    """``(name to show, text, base directory)`` of one manifest file."""
    if path == "-":
        return "<stdin>", sys.stdin.read(), os.getcwd()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: not UTF-8 text") from None
    return path, text, os.path.dirname(os.path.abspath(path))


def _raise_errors(errors: list[ManifestError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ManifestError("\n".join(str(error) for error in errors))


def _parse_stream(
    text: str, file: str, base_dir: str | None
) -> tuple[list[tuple[int, Resource]], list[ManifestError]]:
    """Every document of ``text`` parsed, and the errors of those that failed.

    A YAML syntax error ends the stream: what follows it cannot be read reliably.
    """
    parsed: list[tuple[int, Resource]] = []
    errors: list[ManifestError] = []
    try:
        for index, doc in _documents(text, file):
            try:
                parsed.append((index, parse_document(doc, base_dir=base_dir)))
            except ManifestError as err:
                errors.append(err.located(file=file, document=index))
    except ManifestError as err:
        errors.append(err)
    return parsed, errors


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping is an error.

    SafeLoader keeps the last value of a repeated key, which would silently drop a field.
    """

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _documents(text: str, file: str) -> Iterator[tuple[int, object]]:
    """``(index in the file, document)`` of each non-empty YAML document of ``text``."""
    loaded = yaml.load_all(text, Loader=_StrictLoader)
    index = 0
    while True:
        try:
            doc = next(loaded)
        except StopIteration:
            return
        except yaml.YAMLError as err:
            raise ManifestError(_yaml_reason(err), file=file, document=index) from None
        if doc is not None:
            yield index, doc
        index += 1


def _yaml_reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"invalid YAML: {err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return f"invalid YAML: {err}"


# ---------------------------------------------------------------------------------------------
# Service


def _parse_service(name: str, value: object, base_dir: str | None) -> Service:
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
    )
    revision = spec.get("revision", dns_label)
    return replace(service, revision=revision or _revision_hash(service))


def revision_spec(service: Service) -> dict[str, object]:
    """What makes a revision: the canonical spec without ``revision``, ``scale`` and
    ``node_selector``.

    Scaling bounds and the node selector say how many instances run and where, not what they
    run, so neither is part of a revision: both change in place (``shoal scale``, or applying
    the same revision with another selector), and a changed selector moves the revision's
    instances to the nodes it now matches without a rollout or a new revision name. Anything
    else changed makes a new revision.
    """
    spec = _service_spec(service, with_revision=False)
    spec.pop("scale", None)
    spec.pop("node_selector", None)
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
        ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"),
    )
    return HealthCheck(
        path=health.get("path", _health_path),
        interval=health.get("interval", positive_duration, _HEALTH.interval),
        timeout=health.get("timeout", positive_duration, _HEALTH.timeout),
        healthy_threshold=health.get("healthy_threshold", integer(1), _HEALTH.healthy_threshold),
        unhealthy_threshold=health.get(
            "unhealthy_threshold", integer(1), _HEALTH.unhealthy_threshold
        ),
    )


def _service_spec(service: Service, *, with_revision: bool = True) -> dict[str, object]:
    spec: dict[str, object] = {}
    if with_revision:
        spec["revision"] = service.revision
    put(spec, "app", service.app)
    put(spec, "command", None if service.command is None else list(service.command))
    put(spec, "workdir", service.workdir)
    put(spec, "env", dict(service.env), {})
    put(spec, "labels", dict(service.labels), {})
    put(spec, "weight", service.weight, 1)
    scale: dict[str, object] = {}
    put(scale, "min", service.scale.min, _SCALE.min)
    put(scale, "max", service.scale.max, _SCALE.max)
    put(scale, "target_concurrency", service.scale.target_concurrency, _SCALE.target_concurrency)
    put_duration(scale, "idle_timeout", service.scale.idle_timeout, _SCALE.idle_timeout)
    put(spec, "scale", scale, {})
    health: dict[str, object] = {}
    put(health, "path", service.health.path)
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
    return spec


_log = logging.getLogger(__name__)


def parse_stored(documents: Mapping[str, object]) -> dict[str, Resource]:
    """Documents read back from the store, by key. One that no longer parses (written by
    another Shoal version, or by hand) is logged and skipped, never fatal to a running process."""
    parsed: dict[str, Resource] = {}
    for key, doc in documents.items():
        try:
            parsed[key] = parse_document(doc)
        except ManifestError as e:
            _log.error("skipping stored document %s: %s", key, e)
    return parsed


class StoredResources:
    """:func:`parse_stored` with memory, for a process that follows the store.

    A watcher hands over the same document object for a key until that key changes, so a
    document seen before is not parsed again: a view caused by an instance's state change costs
    no parsing at all, only config changes do.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[object, Resource]] = {}

    def parse(self, kind: str, documents: Mapping[str, object]) -> dict[str, Resource]:
        """The resources of one kind in ``documents``, by key (bad ones skipped and logged)."""
        out: dict[str, Resource] = {}
        fresh: dict[str, object] = {}
        for key, doc in documents.items():
            hit = self._seen.get((kind, key))
            if hit is not None and hit[0] is doc:
                out[key] = hit[1]
            else:
                fresh[key] = doc
        for key, resource in parse_stored(fresh).items():
            self._seen[(kind, key)] = (documents[key], resource)
            out[key] = resource
        for gone in [k for k in self._seen if k[0] == kind and k[1] not in documents]:
            del self._seen[gone]
        return out
