"""Authorization decisions with Istio's semantics: shoal.mesh.authz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.authz import Decision, compile_policies, evaluate
from shoal.resources.manifest import parse_text
from shoal.resources.model import AuthorizationPolicy, Operation, Rule, Source

PROPERTY = settings(max_examples=150, deadline=None, database=None)

HELLO = "spiffe://cluster.local/svc/hello"
WORLD = "spiffe://cluster.local/svc/world"
OTHER = "spiffe://cluster.local/svc/other"
GATEWAY = "spiffe://cluster.local/gateway"
WORLD_LABELS = {"app": "world", "version": "v1"}


def policies(text: str) -> list[AuthorizationPolicy]:
    """The AuthorizationPolicies of a YAML manifest, parsed as `shoal apply` would."""
    result = [p for p in parse_text(text) if isinstance(p, AuthorizationPolicy)]
    assert result
    return result


def policy(name: str, spec: str) -> str:
    """One AuthorizationPolicy document named ``name`` with the YAML ``spec`` block."""
    indented = "\n".join(f"  {line}" for line in spec.strip().splitlines())
    return (
        f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n{indented}\n"
    )


ALLOW_NOTHING = policy("allow-nothing", "{}")
DENY_ALL = policy("deny-all", "action: DENY\nrules: [{}]")
ALLOW_ALL = policy("allow-all", "action: ALLOW\nrules: [{}]")
ONLY_HELLO_CALLS_WORLD = policy(
    "world-from-hello",
    """
selector: {matchLabels: {app: world}}
action: ALLOW
rules:
- from:
  - source: {principals: [cluster.local/svc/hello]}
""",
)


def check(
    text: str,
    principal: str | None,
    method: str = "GET",
    path: str = "/",
    labels: dict[str, str] | None = None,
) -> Decision:
    """The decision for one request to a workload (world's labels by default)."""
    target = WORLD_LABELS if labels is None else labels
    return evaluate(policies(text), target, principal, method, path)


def test_no_policy_allows_everything() -> None:
    """With no AuthorizationPolicy at all, every request passes."""
    decision = evaluate([], WORLD_LABELS, None, "DELETE", "/")
    assert decision == Decision(allowed=True, policy=None, reason="no ALLOW policy applies")


def test_allow_nothing_denies_every_request() -> None:
    """Istio's allow-nothing (ALLOW, no rules) denies even authenticated callers."""
    for principal in (HELLO, GATEWAY, None):
        decision = check(ALLOW_NOTHING, principal)
        assert decision == Decision(allowed=False, policy=None, reason="no ALLOW policy matched")


def test_allow_all_allows_every_request() -> None:
    """Istio's allow-all (ALLOW, rules: [{}]) lets everyone in, plaintext included."""
    for principal in (HELLO, None):
        decision = check(ALLOW_ALL, principal, "POST", "/anything")
        assert decision.allowed and decision.policy == "allow-all"


def test_deny_is_evaluated_before_allow() -> None:
    """A matching DENY wins over a matching ALLOW (Istio evaluates DENY first)."""
    decision = check(ALLOW_ALL + DENY_ALL, HELLO)
    assert decision == Decision(
        allowed=False, policy="deny-all", reason="denied by DENY policy deny-all"
    )


def test_only_hello_may_call_world() -> None:
    """Acceptance 2: an ALLOW naming hello admits hello and refuses any other caller."""
    assert check(ONLY_HELLO_CALLS_WORLD, HELLO).allowed
    assert check(ONLY_HELLO_CALLS_WORLD, "cluster.local/svc/hello").allowed
    assert not check(ONLY_HELLO_CALLS_WORLD, OTHER).allowed
    assert not check(ONLY_HELLO_CALLS_WORLD, GATEWAY).allowed
    assert not check(ONLY_HELLO_CALLS_WORLD, None).allowed


def test_selector_matches_workloads_whose_labels_include_it() -> None:
    """A policy applies when the workload's labels are a superset of matchLabels."""
    exact = policy("v1-only", "selector: {matchLabels: {app: world, version: v1}}\nrules: []")
    assert not check(exact, HELLO, labels={"app": "world", "version": "v1", "tier": "x"}).allowed
    # A workload the selector does not cover has no ALLOW policy: allowed.
    decision = check(exact, HELLO, labels={"app": "world", "version": "v2"})
    assert decision == Decision(allowed=True, policy=None, reason="no ALLOW policy applies")
    assert check(ONLY_HELLO_CALLS_WORLD, OTHER, labels={"app": "hello"}).allowed
    assert check(DENY_ALL, HELLO, labels={}).allowed is False  # no selector: every workload


@pytest.mark.parametrize(
    ("pattern", "principal", "allowed"),
    [
        ("*", HELLO, True),
        ("*", GATEWAY, True),
        ("*", None, False),
        ("cluster.local/svc/*", HELLO, True),
        ("cluster.local/svc/*", GATEWAY, False),
        ("*/svc/hello", HELLO, True),
        ("*/svc/hello", "spiffe://other.org/svc/hello", True),
        ("*/svc/hello", WORLD, False),
        ("spiffe://cluster.local/svc/hello", HELLO, True),
        ("cluster.local/svc/hello", "spiffe://cluster.local/svc/hello2", False),
        ("cluster.local/svc/hello", None, False),
    ],
)
def test_principal_wildcards(pattern: str, principal: str | None, allowed: bool) -> None:
    """`*` matches any authenticated caller, `x*` is a prefix, `*x` a suffix, else exact."""
    text = policy("p", f'rules:\n- from:\n  - source: {{principals: ["{pattern}"]}}')
    assert check(text, principal).allowed is allowed


ACCOUNTS = {"bookinfo-productpage": ["productpage"], "default": ["hello", "world"]}


@pytest.mark.parametrize(
    ("pattern", "principal", "allowed"),
    [
        ("cluster.local/ns/default/sa/bookinfo-productpage", "cluster.local/svc/productpage", True),
        ("cluster.local/ns/default/sa/bookinfo-productpage", HELLO, False),
        ("cluster.local/ns/default/sa/bookinfo-productpage", "other.org/svc/productpage", False),
        ("cluster.local/ns/default/sa/default", HELLO, True),
        ("cluster.local/ns/default/sa/default", WORLD, True),
        ("cluster.local/ns/default/sa/default", "cluster.local/svc/productpage", False),
        ("cluster.local/ns/default/sa/nobody", HELLO, False),
        ("*/ns/default/sa/bookinfo-productpage", "other.org/svc/productpage", True),
        ("*/ns/default/sa/bookinfo-productpage", WORLD, False),
        ("cluster.local/ns/default/sa/*", OTHER, True),
        ("cluster.local/ns/default/sa/*", GATEWAY, False),
        ("cluster.local/ns/default/sa/*", None, False),
    ],
)
def test_service_account_principals_stand_for_the_services_of_that_account(
    pattern: str, principal: str | None, allowed: bool
) -> None:
    """Istio's ``<td>/ns/default/sa/<account>`` matches the callers whose Service runs as that
    account (``service_account``; Kubernetes' ``default`` when unset), in that trust domain."""
    text = policy("p", f'rules:\n- from:\n  - source: {{principals: ["{pattern}"]}}')
    authorizer = compile_policies(policies(text), ACCOUNTS)
    assert authorizer.check(WORLD_LABELS, principal, "GET", "/").allowed is allowed


def test_an_account_in_not_principals_excludes_its_services() -> None:
    """notPrincipals with an account excludes exactly that account's services."""
    text = policy("p", 'rules:\n- from:\n  - source: {notPrincipals: ["*/ns/default/sa/default"]}')
    authorizer = compile_policies(policies(text), ACCOUNTS)
    assert not authorizer.check(WORLD_LABELS, HELLO, "GET", "/").allowed
    assert authorizer.check(WORLD_LABELS, "cluster.local/svc/productpage", "GET", "/").allowed


def test_not_principals_star_denies_plaintext_callers() -> None:
    """Istio's require-mTLS idiom: DENY from notPrincipals ["*"] refuses callers without ID."""
    text = policy(
        "require-mtls", 'action: DENY\nrules:\n- from:\n  - source: {notPrincipals: ["*"]}'
    )
    assert not check(text, None).allowed
    assert check(text, HELLO).allowed


def test_deny_admin_paths_to_all_but_one_caller() -> None:
    """Istio's DENY with notPrincipals and paths: only the named caller reaches /admin."""
    text = policy(
        "admin",
        """
action: DENY
rules:
- from:
  - source: {notPrincipals: [cluster.local/svc/ops]}
  to:
  - operation: {paths: [/admin, /admin/*]}
""",
    )
    assert not check(text, HELLO, path="/admin").allowed
    assert not check(text, HELLO, path="/admin/users").allowed
    assert check(text, "spiffe://cluster.local/svc/ops", path="/admin/users").allowed
    assert check(text, HELLO, path="/administrator").allowed
    assert check(text, HELLO, path="/api").allowed


def test_not_paths_and_methods() -> None:
    """ALLOW GET/HEAD anywhere except /private/*; other methods are refused."""
    text = policy(
        "reads",
        """
rules:
- to:
  - operation: {methods: [GET, HEAD], notPaths: ["/private/*"]}
""",
    )
    assert check(text, None, "GET", "/public").allowed
    assert check(text, None, "HEAD", "/").allowed
    assert not check(text, None, "GET", "/private/key").allowed
    assert not check(text, None, "POST", "/public").allowed
    assert not check(text, None, "get", "/public").allowed  # methods are case-sensitive


def test_not_methods_and_path_suffix() -> None:
    """notMethods excludes methods; `*.png` is a suffix match; `*` any path."""
    text = policy(
        "images",
        """
rules:
- to:
  - operation: {notMethods: [DELETE], paths: ["*.png"]}
  - operation: {methods: [OPTIONS], paths: ["*"]}
""",
    )
    assert check(text, None, "PUT", "/img/logo.png").allowed
    assert not check(text, None, "DELETE", "/img/logo.png").allowed
    assert not check(text, None, "GET", "/img/logo.jpg").allowed
    assert check(text, None, "OPTIONS", "/anything").allowed


def test_from_and_to_are_anded_entries_ored() -> None:
    """Within a rule every present list must match; entries of one list are alternatives."""
    text = policy(
        "mixed",
        """
rules:
- from:
  - source: {principals: [cluster.local/svc/hello]}
  - source: {principals: [cluster.local/gateway]}
  to:
  - operation: {methods: [GET]}
  - operation: {paths: [/submit]}
""",
    )
    assert check(text, HELLO, "GET", "/x").allowed
    assert check(text, GATEWAY, "POST", "/submit").allowed
    assert not check(text, HELLO, "POST", "/x").allowed
    assert not check(text, OTHER, "GET", "/x").allowed


def test_fields_within_a_source_or_operation_are_anded() -> None:
    """principals and notPrincipals in one source must both hold."""
    text = policy(
        "svc-but-not-other",
        """
rules:
- from:
  - source: {principals: ["cluster.local/svc/*"], notPrincipals: [cluster.local/svc/other]}
""",
    )
    assert check(text, HELLO).allowed
    assert not check(text, OTHER).allowed


def test_query_string_is_not_part_of_the_path() -> None:
    """Paths are matched without their query or fragment, as Istio does."""
    text = policy("exact", "rules:\n- to:\n  - operation: {paths: [/info]}")
    assert check(text, None, "GET", "/info?debug=1").allowed
    assert check(text, None, "GET", "/info#top").allowed
    assert not check(text, None, "GET", "/info/x?y").allowed


def test_decision_names_the_first_policy_by_name_whatever_the_order() -> None:
    """When several policies match, the one named is the first by name, for stable logs."""
    second = policy("b-allow", "rules: [{}]")
    first = policy("a-allow", "rules: [{}]")
    assert check(second + first, HELLO).policy == "a-allow"
    assert check(first + second, HELLO).policy == "a-allow"


def test_workload_authorizer_agrees_with_check() -> None:
    """for_workload(labels).check(...) is the same decision as check(labels, ...)."""
    authorizer = compile_policies(policies(ONLY_HELLO_CALLS_WORLD + DENY_ALL))
    scoped = authorizer.for_workload({"app": "hello"})
    for principal in (HELLO, OTHER, None):
        assert scoped.check(principal, "GET", "/") == authorizer.check(
            {"app": "hello"}, principal, "GET", "/"
        )


# ---------------------------------------------------------------------------------------------
# Properties

PRINCIPALS = ("cluster.local/svc/hello", "cluster.local/svc/world", "cluster.local/gateway")
PATTERNS = (*PRINCIPALS, "*", "cluster.local/svc/*", "*/hello", "*/gateway")
METHODS = ("GET", "POST", "DELETE")
PATHS = ("/", "/api", "/api/x", "/img/a.png")
PATH_PATTERNS = (*PATHS, "*", "/api/*", "*.png")
LABEL_POOL = (("app", "world"), ("version", "v1"), ("tier", "web"))


def values(pool: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    """A possibly empty tuple drawn from ``pool``."""
    return st.lists(st.sampled_from(pool), max_size=2).map(tuple)


random_sources = st.builds(
    Source, principals=values(PATTERNS), not_principals=values(PATTERNS)
).filter(lambda source: source != Source())
random_operations = st.builds(
    Operation,
    methods=values(METHODS),
    not_methods=values(METHODS),
    paths=values(PATH_PATTERNS),
    not_paths=values(PATH_PATTERNS),
).filter(lambda operation: operation != Operation())
random_rules = st.builds(
    Rule,
    from_=st.lists(random_sources, max_size=2).map(tuple),
    to=st.lists(random_operations, max_size=2).map(tuple),
)
selectors = st.lists(st.sampled_from(LABEL_POOL), max_size=2, unique=True).map(
    lambda items: tuple(sorted(items))
)
random_policies = st.builds(
    AuthorizationPolicy,
    name=st.from_regex(r"p[0-9]{1,3}", fullmatch=True),
    match_labels=selectors,
    action=st.sampled_from(["ALLOW", "DENY"]),
    rules=st.lists(random_rules, max_size=3).map(tuple),
)
requests = st.tuples(
    st.one_of(st.none(), st.sampled_from(PRINCIPALS).map(lambda p: f"spiffe://{p}")),
    st.sampled_from(METHODS),
    st.sampled_from(PATHS),
)
targets = st.lists(st.sampled_from(LABEL_POOL), unique=True).map(dict)


@PROPERTY
@given(
    others=st.lists(random_policies, max_size=6),
    request=requests,
    target=targets,
    data=st.data(),
)
def test_a_matching_deny_always_wins(
    others: list[AuthorizationPolicy],
    request: tuple[str | None, str, str],
    target: dict[str, str],
    data: st.DataObject,
) -> None:
    """Whatever ALLOW policies exist, a DENY policy that matches the request denies it."""
    principal, method, path = request
    source = (
        Source(principals=(principal.removeprefix("spiffe://"),))
        if principal is not None
        else Source(not_principals=("*",))
    )
    items = sorted(target.items())
    selector = data.draw(st.lists(st.sampled_from(items), unique=True) if items else st.just([]))
    deny = AuthorizationPolicy(
        name="zz-deny",
        match_labels=tuple(sorted(selector)),
        action="DENY",
        rules=(Rule(from_=(source,), to=(Operation(methods=(method,), paths=(path,)),)),),
    )
    policies = data.draw(st.permutations([*others, deny]))
    decision = evaluate(policies, target, principal, method, path)
    assert not decision.allowed
    assert decision.policy is not None and decision.reason.startswith("denied by DENY")


@PROPERTY
@given(policies=st.lists(random_policies, max_size=6), request=requests, target=targets)
def test_adding_an_allow_policy_never_overrides_a_deny(
    policies: list[AuthorizationPolicy],
    request: tuple[str | None, str, str],
    target: dict[str, str],
) -> None:
    """A request denied by a DENY policy stays denied after an allow-all policy is added."""
    before = evaluate(policies, target, *request)
    allow_all = AuthorizationPolicy(name="allow-all", rules=(Rule(),))
    after = evaluate([*policies, allow_all], target, *request)
    if before.reason.startswith("denied by DENY"):
        assert after == before
    else:
        assert after.allowed


@PROPERTY
@given(policies=st.lists(random_policies, max_size=6), request=requests, target=targets)
def test_order_of_policies_does_not_matter(
    policies: list[AuthorizationPolicy],
    request: tuple[str | None, str, str],
    target: dict[str, str],
) -> None:
    """The decision, including the policy it names, is the same for reversed input."""
    assert evaluate(policies, target, *request) == evaluate(policies[::-1], target, *request)
