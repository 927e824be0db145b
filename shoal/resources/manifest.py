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

This module owns the envelope (``apiVersion``, ``kind``, ``metadata``), files and streams of
documents, and documents read back from the store; each kind's ``spec`` is read and written by
its own module (:mod:`.service_spec`, :mod:`.virtual_service`, :mod:`.destination_rule`,
:mod:`.security`), and YAML text is read by :mod:`.yaml_documents`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace

from shoal.errors import ManifestError, UserError
from shoal.resources.destination_rule import destination_rule_spec, parse_destination_rule
from shoal.resources.fields import (
    Section,
    dns_label,
    dns_subdomain,
    integer,
    labels,
    section,
    string,
    string_map,
)
from shoal.resources.gateway import gateway_spec, parse_gateway
from shoal.resources.model import (
    ISTIO_APIS,
    KINDS,
    NAMESPACE,
    SECURITY_APIS,
    SERVICE_API,
    DestinationRule,
    Gateway,
    Metadata,
    PeerAuthentication,
    Resource,
    Service,
    ServiceEntry,
    VirtualService,
)
from shoal.resources.security import (
    authorization_policy_spec,
    parse_authorization_policy,
    parse_peer_authentication,
    peer_authentication_spec,
)
from shoal.resources.service_entry import parse_service_entry, service_entry_spec
from shoal.resources.service_spec import parse_service, service_spec
from shoal.resources.virtual_service import parse_virtual_service, virtual_service_spec
from shoal.resources.yaml_documents import read_documents

__all__ = [
    "StoredResources",
    "load_files",
    "parse_document",
    "parse_stored",
    "parse_text",
    "to_document",
]


# ---------------------------------------------------------------------------------------------
# Documents


def parse_document(doc: object, *, base_dir: str | None = None) -> Resource:
    """The resource one loaded YAML document describes.

    ``base_dir`` is the directory a relative ``spec.workdir`` of a Service is resolved against.
    Raises ManifestError naming the field path and value (the caller adds file and document).
    """
    if not isinstance(doc, dict):
        raise ManifestError("a document must be a mapping", value=doc)
    written = doc.get("kind")
    if isinstance(written, str) and written not in KINDS:  # before its fields: say the kind
        raise ManifestError(
            f"unknown kind; expected one of {', '.join(KINDS)}", field="kind", value=written
        )
    status = ("status",) if doc.get("kind") == "Service" else ()  # Shoal writes a Service's
    top = Section(doc, "", ("apiVersion", "kind", "metadata", "spec", *status))
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
    metadata.get("namespace", _namespace)
    meta = Metadata(
        labels=metadata.get("labels", labels, ()),
        annotations=metadata.get("annotations", string_map, ()),
    )
    resource = replace(_parse_spec(kind, metadata, top, base_dir), metadata=meta)
    if isinstance(resource, Service) and top.has("status"):
        written = top.need("status", section(("created",)))
        resource = replace(resource, created=written.get("created", integer(0), 0))
    return resource


def _parse_spec(kind: str, metadata: Section, top: Section, base_dir: str | None) -> Resource:
    if kind == "Service":
        name = metadata.need("name", dns_label)
        return parse_service(name, top.need("spec", _unparsed), base_dir)
    name = metadata.need("name", dns_subdomain)
    if kind == "VirtualService":
        return parse_virtual_service(name, top.need("spec", _unparsed))
    if kind == "Gateway":
        return parse_gateway(name, top.need("spec", _unparsed), base_dir)
    if kind == "ServiceEntry":
        return parse_service_entry(name, top.need("spec", _unparsed))
    if kind == "DestinationRule":
        return parse_destination_rule(name, top.need("spec", _unparsed))
    # An empty security spec is meaningful (Istio's "allow-nothing" policy is ``spec: {}``).
    spec = {} if top.raw("spec") is None else top.raw("spec")
    if kind == "PeerAuthentication":
        return parse_peer_authentication(name, spec)
    return parse_authorization_policy(name, spec)


def _namespace(value: object, field: str) -> str:
    namespace = string(value, field)
    if namespace != NAMESPACE:
        raise ManifestError(
            f"Shoal serves one namespace, {NAMESPACE}: leave metadata.namespace out or write "
            f"{NAMESPACE}",
            field=field,
            value=namespace,
        )
    return namespace


def _unparsed(value: object, field: str) -> object:
    return value


def to_document(resource: Resource) -> dict[str, object]:
    """The canonical manifest of ``resource``: plain JSON-able values that parse back to it."""
    if isinstance(resource, Service):
        api_version, spec = SERVICE_API, service_spec(resource)
    elif isinstance(resource, VirtualService):
        api_version, spec = ISTIO_APIS[0], virtual_service_spec(resource)
    elif isinstance(resource, DestinationRule):
        api_version, spec = ISTIO_APIS[0], destination_rule_spec(resource)
    elif isinstance(resource, Gateway):
        api_version, spec = ISTIO_APIS[0], gateway_spec(resource)
    elif isinstance(resource, ServiceEntry):
        api_version, spec = ISTIO_APIS[0], service_entry_spec(resource)
    elif isinstance(resource, PeerAuthentication):
        api_version, spec = SECURITY_APIS[0], peer_authentication_spec(resource)
    else:
        api_version, spec = SECURITY_APIS[0], authorization_policy_spec(resource)
    document: dict[str, object] = {
        "apiVersion": api_version,
        "kind": resource.kind,
        "metadata": _metadata(resource),
        "spec": spec,
    }
    if isinstance(resource, Service) and resource.created:
        document["status"] = {"created": resource.created}
    return document


def _metadata(resource: Resource) -> dict[str, object]:
    written: dict[str, object] = {"name": resource.name}
    if resource.metadata.labels:
        written["labels"] = dict(resource.metadata.labels)
    if resource.metadata.annotations:
        written["annotations"] = dict(resource.metadata.annotations)
    return written


def parse_text(text: str, *, file: str = "<string>", base_dir: str | None = None) -> list[Resource]:
    """The resources of a multi-document YAML string; empty documents are skipped.

    Errors name ``file`` and the 0-based document index; several are reported together as in
    :func:`load_files`. YAML syntax errors are ManifestErrors with the line and column.
    """
    parsed, errors = _parse_stream(text, file, base_dir)
    _raise_errors(errors)
    return [resource for _, resource in parsed]


def load_files(paths: Sequence[str]) -> list[Resource]:
    """The resources of all ``paths`` (``-`` is stdin; a directory is each of its ``.yaml``,
    ``.yml`` and ``.json`` files, by name, as ``kubectl apply -f DIR``), in order, once all of
    them are valid.

    A relative ``workdir`` is resolved against its file's directory (the current one for stdin).
    An unreadable file is a UserError naming it. Invalid documents, and two documents defining
    the same kind and key, raise ManifestError (all errors listed, one per line); so does a
    file with no resource in it (applying it would do nothing while saying it did).
    """
    sources = [_read(path) for path in _expand(paths)]
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
        if not parsed and not file_errors:
            errors.append(ManifestError("no resources in it (an empty file?)", file=file))
    _raise_errors(errors)
    return resources


_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _expand(paths: Sequence[str]) -> list[str]:
    """``paths`` with each directory replaced by the manifest files in it, by name."""
    files: list[str] = []
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            files.append(path)
            continue
        found = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.endswith(_MANIFEST_SUFFIXES) and os.path.isfile(os.path.join(path, name))
        )
        if not found:
            raise UserError(f"no manifest in {path} (files ending in .yaml, .yml or .json)")
        files += found
    return files


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
        for index, doc in read_documents(text, file):
            try:
                parsed.append((index, parse_document(doc, base_dir=base_dir)))
            except ManifestError as err:
                errors.append(err.located(file=file, document=index))
    except ManifestError as err:
        errors.append(err)
    return parsed, errors


# ---------------------------------------------------------------------------------------------
# Documents read back from the store

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

    def parse_one(self, kind: str, key: str, document: object | None) -> Resource | None:
        """The resource of one document of ``kind`` (None: there is none, or it is bad)."""
        hit = self._seen.get((kind, key))
        if hit is not None and hit[0] is document:
            return hit[1]
        self._seen.pop((kind, key), None)
        if document is None:
            return None
        resource = parse_stored({key: document}).get(key)
        if resource is not None:
            self._seen[(kind, key)] = (document, resource)
        return resource
