"""PeerAuthentication and AuthorizationPolicy manifests: shoal.resources.security through
shoal.resources.manifest."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ManifestError
from shoal.resources.manifest import parse_document, parse_text, to_document
from shoal.resources.model import (
    KINDS,
    AuthorizationPolicy,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
)

PROPERTY = settings(max_examples=150, deadline=None, database=None)

FULL_PEER_AUTHENTICATION = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: hello-strict
  namespace: default
spec:
  selector:
    matchLabels: {app: hello}
  mtls:
    mode: STRICT
"""

FULL_AUTHORIZATION_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: world-callers
spec:
  selector:
    matchLabels: {app: world, version: v2}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["spiffe://cluster.local/svc/hello", "cluster.local/gateway"]
    - source:
        principals: ["*/svc/admin"]
        notPrincipals: ["cluster.local/svc/evil*"]
    to:
    - operation:
        methods: [GET, HEAD]
        paths: ["/api/*", "/healthz"]
        notPaths: ["/api/admin/*"]
    - operation:
        notMethods: [DELETE]
        paths: ["*.png"]
  - {}
"""


def policy_doc(spec: object, *, kind: str = "AuthorizationPolicy") -> dict[str, object]:
    """A security document of ``kind`` named ``p`` with ``spec``."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "p"},
        "spec": spec,
    }


def manifest_error(doc: object) -> ManifestError:
    """The ManifestError parsing ``doc`` raises."""
    with pytest.raises(ManifestError) as caught:
        parse_document(doc)
    return caught.value


def test_new_kinds_are_registered() -> None:
    """Both security kinds are known to KINDS, so `shoal get` and the store accept them."""
    assert KINDS["PeerAuthentication"] is PeerAuthentication
    assert KINDS["AuthorizationPolicy"] is AuthorizationPolicy


def test_full_peer_authentication_parses_to_the_expected_values() -> None:
    """Selector labels and the mTLS mode are read; namespace is accepted and unused."""
    assert parse_text(FULL_PEER_AUTHENTICATION) == [
        PeerAuthentication(
            name="hello-strict", match_labels=(("app", "hello"),), mtls_mode="STRICT"
        )
    ]


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"])
def test_every_mtls_mode_is_accepted(mode: str) -> None:
    """Istio's four modes parse; without selector the policy covers every workload."""
    doc = policy_doc({"mtls": {"mode": mode}}, kind="PeerAuthentication")
    assert parse_document(doc) == PeerAuthentication(name="p", mtls_mode=mode)  # type: ignore[arg-type]


def test_peer_authentication_defaults_to_unset() -> None:
    """An empty spec, or mtls without mode, is UNSET (inherit), as in Istio."""
    empty = parse_document(policy_doc({}, kind="PeerAuthentication"))
    assert empty == PeerAuthentication(name="p")
    no_mode = parse_document(policy_doc({"mtls": {}}, kind="PeerAuthentication"))
    assert no_mode == PeerAuthentication(name="p", mtls_mode="UNSET")


def test_full_authorization_policy_parses_to_the_expected_values() -> None:
    """Rules, sources and operations are read; principals lose their spiffe:// prefix."""
    [policy] = parse_text(FULL_AUTHORIZATION_POLICY)
    assert policy == AuthorizationPolicy(
        name="world-callers",
        match_labels=(("app", "world"), ("version", "v2")),
        action="ALLOW",
        rules=(
            Rule(
                from_=(
                    Source(principals=("cluster.local/svc/hello", "cluster.local/gateway")),
                    Source(
                        principals=("*/svc/admin",),
                        not_principals=("cluster.local/svc/evil*",),
                    ),
                ),
                to=(
                    Operation(
                        methods=("GET", "HEAD"),
                        paths=("/api/*", "/healthz"),
                        not_paths=("/api/admin/*",),
                    ),
                    Operation(not_methods=("DELETE",), paths=("*.png",)),
                ),
            ),
            Rule(),
        ),
    )


def test_istio_allow_nothing_and_deny_all_examples() -> None:
    """Istio's documented `spec: {}` (allow nothing) and DENY `rules: [{}]` (deny all) parse."""
    allow_nothing = parse_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow-nothing}\nspec: {}\n"
    )
    assert allow_nothing == [AuthorizationPolicy(name="allow-nothing")]
    deny_all = parse_document(policy_doc({"action": "DENY", "rules": [{}]}))
    assert deny_all == AuthorizationPolicy(name="p", action="DENY", rules=(Rule(),))
    no_spec = parse_document({**policy_doc({}), "spec": None})
    assert no_spec == AuthorizationPolicy(name="p")


def test_security_kinds_need_security_api_versions() -> None:
    """security.istio.io/v1 and v1beta1 are accepted; the networking group is not."""
    doc = policy_doc({})
    for version in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        assert parse_document({**doc, "apiVersion": version}) == AuthorizationPolicy(name="p")
    error = manifest_error({**doc, "apiVersion": "networking.istio.io/v1"})
    assert error.field == "apiVersion"
    error = manifest_error({**policy_doc({}, kind="VirtualService")})
    assert error.field == "apiVersion"


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        (
            policy_doc({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}, kind="PeerAuthentication"),
            "spec.portLevelMtls",
            "not supported by Shoal",
        ),
        (
            policy_doc({"mtls": {"mode": "strict"}}, kind="PeerAuthentication"),
            "spec.mtls.mode",
            "must be one of",
        ),
        (policy_doc({"action": "CUSTOM"}), "spec.action", "CUSTOM is not supported"),
        (policy_doc({"action": "AUDIT"}), "spec.action", "AUDIT is not supported"),
        (policy_doc({"action": "allow"}), "spec.action", "must be one of"),
        (policy_doc({"provider": {"name": "ext"}}), "spec.provider", "CUSTOM"),
        (policy_doc({"targetRef": {"kind": "Gateway"}}), "spec.targetRef", "selector"),
        (
            policy_doc({"rules": [{"when": [{"key": "request.headers[x]", "values": ["1"]}]}]}),
            "spec.rules[0].when",
            "conditions are not supported",
        ),
        (
            policy_doc({"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}),
            "spec.rules[0].from[0].source.namespaces",
            "no namespaces",
        ),
        (
            policy_doc({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
            "spec.rules[0].from[0].source.requestPrincipals",
            "JWT",
        ),
        (
            policy_doc({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}),
            "spec.rules[0].from[0].source.ipBlocks",
            "IP blocks",
        ),
        (
            policy_doc({"rules": [{"to": [{"operation": {"hosts": ["hello"]}}]}]}),
            "spec.rules[0].to[0].operation.hosts",
            "methods and paths only",
        ),
        (
            policy_doc({"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}),
            "spec.rules[0].to[0].operation.ports",
            "methods and paths only",
        ),
        (
            policy_doc({"rules": [{"to": [{"operation": {"verbs": ["GET"]}}]}]}),
            "spec.rules[0].to[0].operation.verbs",
            "field not supported by Shoal",
        ),
        (policy_doc({"rules": [{"from": []}]}), "spec.rules[0].from", "at least 1"),
        (policy_doc({"rules": [{"to": []}]}), "spec.rules[0].to", "at least 1"),
        (policy_doc({"rules": [{"from": [{}]}]}), "spec.rules[0].from[0].source", "required"),
        (
            policy_doc({"rules": [{"from": [{"source": {}}]}]}),
            "spec.rules[0].from[0].source",
            "principals or notPrincipals",
        ),
        (
            policy_doc({"rules": [{"to": [{"operation": {}}]}]}),
            "spec.rules[0].to[0].operation",
            "methods, notMethods, paths or notPaths",
        ),
        (
            policy_doc({"rules": [{"to": [{"operation": {"paths": []}}]}]}),
            "spec.rules[0].to[0].operation.paths",
            "at least 1",
        ),
        (
            policy_doc({"selector": {"matchLabels": {"app": 1}}}),
            "spec.selector.matchLabels.app",
            "label value",
        ),
        (policy_doc({"selector": {"labels": {}}}), "spec.selector.labels", "not supported"),
        (policy_doc({"rules": {}}), "spec.rules", "must be a list"),
    ],
)
def test_unsupported_and_invalid_fields_name_their_path(
    doc: dict[str, object], field: str, reason: str
) -> None:
    """Every field Shoal cannot honour, or an invalid value, is an error naming the path."""
    error = manifest_error(doc)
    assert error.field == field
    assert reason in error.reason


def principal_error(principal: object) -> ManifestError:
    """The error for a policy whose one principal is ``principal``."""
    return manifest_error(
        policy_doc({"rules": [{"from": [{"source": {"principals": [principal]}}]}]})
    )


@pytest.mark.parametrize(
    ("principal", "reason"),
    [
        ("cluster.local/ns/foo/sa/hello", "names namespace foo"),
        ("*/ns/istio-system/sa/sleep", "names namespace istio-system"),
        ("cluster.local/ns/default/sa/Sleep", "service-account principal Shoal can map"),
        ("cluster.local/ns/default/sa/a/b", "service-account principal Shoal can map"),
        ("cluster.local/ns/default/sa/x*", "service-account principal Shoal can map"),
        ("ns/default/sa/x", "service-account principal Shoal can map"),
        ("cluster.local/svc/*/x", "'*' may only"),
        ("**", "'*' may only"),
        ("Cluster.local/svc/hello", "trust domain"),
        ("cluster.local/svc/../x", "'..'"),
        ("cluster.local/svc/he llo", "segments"),
        ("cluster.local/svc/he llo*", "only letters"),
        ("", "non-empty"),
        (7, "non-empty"),
    ],
)
def test_invalid_principals_are_refused(principal: object, reason: str) -> None:
    """Istio SA principals of another namespace or that Shoal cannot map, mid-string wildcards
    and invalid SPIFFE IDs are refused."""
    error = principal_error(principal)
    assert error.field == "spec.rules[0].from[0].source.principals[0]"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("spiffe://cluster.local/svc/hello", "cluster.local/svc/hello"),
        ("cluster.local/svc/hello", "cluster.local/svc/hello"),
        ("spiffe://cluster.local/svc/*", "cluster.local/svc/*"),
        ("*", "*"),
        ("spiffe://*", "*"),
        ("*/gateway", "*/gateway"),
        ("cluster.local/node/n1", "cluster.local/node/n1"),
        (
            "cluster.local/ns/default/sa/bookinfo-reviews",
            "cluster.local/ns/default/sa/bookinfo-reviews",
        ),
        ("spiffe://cluster.local/ns/default/sa/sleep", "cluster.local/ns/default/sa/sleep"),
        ("*/ns/default/sa/sleep", "*/ns/default/sa/sleep"),
        ("cluster.local/ns/default/sa/*", "cluster.local/ns/default/sa/*"),
    ],
)
def test_principals_are_stored_without_the_spiffe_scheme(written: str, stored: str) -> None:
    """With or without spiffe://, a principal is kept in Istio's scheme-less form."""
    doc = policy_doc({"rules": [{"from": [{"source": {"notPrincipals": [written]}}]}]})
    policy = parse_document(doc)
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.rules[0].from_[0].not_principals == (stored,)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("paths", "/api/{*}", "path templates"),
        ("paths", "/api/{**}/x", "path templates"),
        ("paths", "api/*", "must start with '/'"),
        ("paths", "/a/*/b", "'*' may only"),
        ("paths", "/a?b=1", "query"),
        ("notPaths", "/a b", "spaces"),
        ("methods", "GE T", "HTTP method"),
        ("notMethods", "G*T", "HTTP method"),
    ],
)
def test_invalid_paths_and_methods_are_refused(key: str, value: str, reason: str) -> None:
    """Path templates, relative paths, inner wildcards and non-token methods are errors."""
    error = manifest_error(policy_doc({"rules": [{"to": [{"operation": {key: [value]}}]}]}))
    assert error.field == f"spec.rules[0].to[0].operation.{key}[0]"
    assert reason in error.reason


def test_to_document_writes_istio_field_names() -> None:
    """The canonical document uses security.istio.io/v1, `from`/`to` and omits defaults."""
    [policy] = parse_text(FULL_AUTHORIZATION_POLICY)
    doc = to_document(policy)
    assert doc["apiVersion"] == "security.istio.io/v1"
    spec = doc["spec"]
    assert isinstance(spec, dict)
    assert "action" not in spec  # ALLOW is the default
    assert spec["rules"][1] == {}
    assert spec["rules"][0]["from"][0] == {
        "source": {"principals": ["cluster.local/svc/hello", "cluster.local/gateway"]}
    }
    [peer] = parse_text(FULL_PEER_AUTHENTICATION)
    assert to_document(peer)["spec"] == {
        "selector": {"matchLabels": {"app": "hello"}},
        "mtls": {"mode": "STRICT"},
    }


@pytest.mark.parametrize("text", [FULL_PEER_AUTHENTICATION, FULL_AUTHORIZATION_POLICY])
def test_full_examples_survive_json_and_yaml(text: str) -> None:
    """to_document output stored as JSON or shown as YAML parses back to the same resource."""
    [resource] = parse_text(text)
    doc = to_document(resource)
    assert parse_document(json.loads(json.dumps(doc))) == resource
    assert parse_text(yaml.safe_dump(doc)) == [resource]


names = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
label_maps = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?)?", fullmatch=True),
    max_size=3,
)
selectors = st.builds(lambda labels: {"matchLabels": labels}, label_maps)
segments = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
exact_principals = st.builds(
    lambda td, kind, name: f"{td}/{kind}/{name}",
    st.sampled_from(["cluster.local", "example.org"]),
    st.sampled_from(["svc", "node"]),
    segments,
)
principals = st.one_of(
    exact_principals,
    exact_principals.map(lambda p: f"spiffe://{p}"),
    st.just("*"),
    segments.map(lambda s: f"*/svc/{s}"),
    st.sampled_from(["cluster.local/svc/*", "example.org/*"]),
)
paths = st.one_of(
    st.lists(segments, min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts)),
    segments.map(lambda s: f"/{s}/*"),
    segments.map(lambda s: f"*.{s}"),
    st.just("*"),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "*"])


def nonempty_list(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """A list of 1 to 3 of ``values``."""
    return st.lists(values, min_size=1, max_size=3)


sources = st.fixed_dictionaries(
    {},
    optional={
        "principals": nonempty_list(principals),
        "notPrincipals": nonempty_list(principals),
    },
).filter(bool)
operations = st.fixed_dictionaries(
    {},
    optional={
        "methods": nonempty_list(methods),
        "notMethods": nonempty_list(methods),
        "paths": nonempty_list(paths),
        "notPaths": nonempty_list(paths),
    },
).filter(bool)
rules = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(sources.map(lambda s: {"source": s}), min_size=1, max_size=2),
        "to": st.lists(operations.map(lambda o: {"operation": o}), min_size=1, max_size=2),
    },
)
authorization_policies = st.builds(
    lambda name, spec: {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name},
        "spec": spec,
    },
    names,
    st.fixed_dictionaries(
        {},
        optional={
            "selector": selectors,
            "action": st.sampled_from(["ALLOW", "DENY"]),
            "rules": st.lists(rules, max_size=3),
        },
    ),
)
peer_authentications = st.builds(
    lambda name, spec: {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name},
        "spec": spec,
    },
    names,
    st.fixed_dictionaries(
        {},
        optional={
            "selector": selectors,
            "mtls": st.fixed_dictionaries(
                {},
                optional={"mode": st.sampled_from(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])},
            ),
        },
    ),
)


@PROPERTY
@given(st.one_of(authorization_policies, peer_authentications))
def test_to_document_round_trips_every_valid_security_document(doc: dict[str, object]) -> None:
    """parse_document(to_document(r)) == r for generated valid security documents."""
    resource = parse_document(doc)
    canonical = to_document(resource)
    assert parse_document(canonical) == resource
    assert parse_document(json.loads(json.dumps(canonical))) == resource
    assert to_document(parse_document(canonical)) == canonical
