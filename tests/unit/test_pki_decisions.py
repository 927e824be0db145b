"""Pure PKI decisions: when a leaf is renewed (shoal.mesh.credentials.renewal_reason), who may
hold which identity and which components lag a root rotation (shoal.platform.ca.rotation), and a
workload's mTLS mode (shoal.mesh.authz.mtls_mode)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import UserError
from shoal.identity.issuance import CA, CLOCK_SKEW, make_csr, new_root, sign
from shoal.identity.pki import cert_from_pem, issuer_key_id, key_id, new_key, renew_at
from shoal.mesh.authz import mtls_mode
from shoal.mesh.credentials import renewal_reason
from shoal.platform.ca.rotation import PHASES, Phase, check_phase, entitled, lagging
from shoal.resources.model import MtlsMode, PeerAuthentication

TD = "cluster.local"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HELLO = f"spiffe://{TD}/svc/hello"

# ---------------------------------------------------------------------------------------------
# renewal_reason


@pytest.fixture(scope="module")
def root_a() -> CA:
    """The first root of the trust domain."""
    return new_root(TD, T0)


@pytest.fixture(scope="module")
def root_b() -> CA:
    """A second root of the same trust domain (as during a rotation)."""
    return new_root(TD, T0)


def _leaf(ca: CA) -> x509.Certificate:
    """A 24 h leaf for svc/hello signed by ``ca`` at T0."""
    csr = make_csr(new_key(), HELLO)
    pem = sign(ca, csr, allowed=lambda _: True, now=T0, valid_for=timedelta(hours=24))
    return cert_from_pem(pem)


@pytest.fixture(scope="module")
def leaf_a(root_a: CA) -> x509.Certificate:
    """A leaf signed by root A."""
    return _leaf(root_a)


@pytest.fixture(scope="module")
def leaf_b(root_b: CA) -> x509.Certificate:
    """A leaf signed by root B."""
    return _leaf(root_b)


def test_leaf_issuer_key_id_is_its_roots_key_id(
    root_a: CA, root_b: CA, leaf_a: x509.Certificate, leaf_b: x509.Certificate
) -> None:
    """A leaf's issuer key id names the root that signed it, and two roots have distinct ids."""
    assert issuer_key_id(leaf_a) == key_id(root_a.cert)
    assert issuer_key_id(leaf_b) == key_id(root_b.cert)
    assert key_id(root_a.cert) != key_id(root_b.cert)


def test_renew_at_is_two_thirds_of_the_back_dated_life(leaf_a: x509.Certificate) -> None:
    """The renewal time is 2/3 of the way from the skew-back-dated not_before to not_after."""
    assert leaf_a.not_valid_before_utc == T0 - CLOCK_SKEW
    assert leaf_a.not_valid_after_utc == T0 + timedelta(hours=24)
    assert renew_at(leaf_a) == T0 - CLOCK_SKEW + (timedelta(hours=24) + CLOCK_SKEW) * 2 / 3


def test_no_cert_held_is_renewed_whatever_else_holds() -> None:
    """Holding no certificate is reported first, even with no roots and a raised epoch."""
    assert renewal_reason(T0, None, 0, 0, []) == "none held"
    assert renewal_reason(T0 + timedelta(days=9), None, 0, 5, []) == "none held"


def test_fresh_cert_under_current_epoch_and_root_is_kept(
    root_a: CA, leaf_a: x509.Certificate
) -> None:
    """A young leaf from a bundled root, issued under the current epoch, is not renewed."""
    assert renewal_reason(T0, leaf_a, 3, 3, [key_id(root_a.cert)]) is None
    # An epoch older than the one the cert was issued under asks for nothing.
    assert renewal_reason(T0, leaf_a, 4, 3, [key_id(root_a.cert)]) is None


def test_renewal_starts_exactly_at_two_thirds_of_life(root_a: CA, leaf_a: x509.Certificate) -> None:
    """One second before renew_at the leaf is kept; at renew_at (and after) it is renewed."""
    roots = [key_id(root_a.cert)]
    boundary = renew_at(leaf_a)
    assert renewal_reason(boundary - timedelta(seconds=1), leaf_a, 1, 1, roots) is None
    assert renewal_reason(boundary, leaf_a, 1, 1, roots) == "2/3 of its life passed"
    assert renewal_reason(leaf_a.not_valid_after_utc, leaf_a, 1, 1, roots) == (
        "2/3 of its life passed"
    )


def test_raised_epoch_asks_for_renewal(root_a: CA, leaf_a: x509.Certificate) -> None:
    """A store epoch above the one the leaf was issued under renews it at once."""
    assert renewal_reason(T0, leaf_a, 1, 2, [key_id(root_a.cert)]) == "rotation asked"


def test_precedence_root_then_epoch_then_age(
    root_a: CA, root_b: CA, leaf_a: x509.Certificate
) -> None:
    """With every cause present the root wins, then the epoch, then the age."""
    late = renew_at(leaf_a) + timedelta(hours=1)
    assert renewal_reason(late, leaf_a, 1, 2, [key_id(root_b.cert)]) == ("its root left the bundle")
    assert renewal_reason(late, leaf_a, 1, 2, [key_id(root_a.cert)]) == "rotation asked"
    assert renewal_reason(late, leaf_a, 2, 2, [key_id(root_a.cert)]) == ("2/3 of its life passed")


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        (("a", "b"), None),
        (("b",), None),
        (("a",), "its root left the bundle"),
        ((), "its root left the bundle"),
    ],
)
def test_cert_from_second_root_is_judged_by_its_own_root(
    root_a: CA,
    root_b: CA,
    leaf_b: x509.Certificate,
    bundle: tuple[str, ...],
    expected: str | None,
) -> None:
    """A leaf of root B is kept while B is bundled (alone or with A) and renewed once B leaves."""
    ids = {"a": key_id(root_a.cert), "b": key_id(root_b.cert)}
    roots = (ids[name] for name in bundle)  # any iterable, even a one-shot generator
    assert renewal_reason(T0, leaf_b, 1, 1, roots) == expected


# ---------------------------------------------------------------------------------------------
# entitled

PLACEMENTS: Mapping[str, Mapping[str, int]] = {
    "n1": {"hello/v1": 2, "idle/v1": 0, "helloworld/v1": 1, "hello-v2/v1": 1},
    "n2": {"world/v3": 1},
}


@pytest.mark.parametrize(
    ("requester", "identity"),
    [
        ("node/n1", f"spiffe://{TD}/node/n1"),
        ("node/n1", HELLO),
        ("node/n1", f"spiffe://{TD}/svc/helloworld"),
        ("node/n1", f"spiffe://{TD}/svc/hello-v2"),
        ("node/n2", f"spiffe://{TD}/svc/world"),
        ("node/n3", f"spiffe://{TD}/node/n3"),
        ("gateway", f"spiffe://{TD}/gateway"),
        ("gateway/edge-1", f"spiffe://{TD}/gateway"),
    ],
)
def test_entitled_identities(requester: str, identity: str) -> None:
    """A node holds its own ID and its placed services' IDs; a gateway holds the gateway ID."""
    assert entitled(requester, identity, TD, PLACEMENTS)


@pytest.mark.parametrize(
    ("requester", "identity"),
    [
        pytest.param("node/n1", f"spiffe://{TD}/node/n2", id="other-node"),
        pytest.param("node/n2", HELLO, id="service-placed-elsewhere"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/idle", id="zero-instances"),
        pytest.param("node/n3", HELLO, id="node-without-placements"),
        pytest.param("node/n1", "spiffe://other.local/svc/hello", id="other-trust-domain"),
        pytest.param("node/n1", "spiffe://other.local/node/n1", id="own-node-other-td"),
        pytest.param("gateway", "spiffe://other.local/gateway", id="gateway-other-td"),
        pytest.param("node/n1", f"spiffe://{TD}/gateway", id="node-asks-gateway"),
        pytest.param("gateway", HELLO, id="gateway-asks-service"),
        pytest.param("gateway", f"spiffe://{TD}/node/n1", id="gateway-asks-node"),
        pytest.param("node/", f"spiffe://{TD}/node/", id="empty-node-name"),
        pytest.param("node/", HELLO, id="empty-node-name-service"),
        pytest.param("node", f"spiffe://{TD}/node/n1", id="bare-node"),
        pytest.param("router/n1", f"spiffe://{TD}/node/n1", id="unknown-kind"),
        pytest.param("gatewayx", f"spiffe://{TD}/gateway", id="gateway-lookalike"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/hell", id="prefix-of-placed-service"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/v1", id="revision-not-service"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/hello/v1", id="placement-key-as-path"),
        pytest.param("node/n1", f"spiffe://{TD}", id="trust-domain-itself"),
        pytest.param("node/n1", f"spiffe://{TD}/node/n1/x", id="under-own-node"),
        pytest.param("node/n1", f"SPIFFE://{TD}/node/n1", id="upper-case-scheme"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/hello/", id="trailing-slash"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/../node/n1", id="dot-dot"),
        pytest.param("node/n1", f"spiffe://{TD}:443/node/n1", id="port"),
        pytest.param("node/n1", f"spiffe://{TD}/svc/hello?x=1", id="query"),
        pytest.param("node/n1", "", id="empty"),
    ],
)
def test_refused_identities(requester: str, identity: str) -> None:
    """Anything but the requester's own node, placed services or gateway role is refused."""
    assert not entitled(requester, identity, TD, PLACEMENTS)


def test_only_the_service_part_of_a_placement_key_entitles() -> None:
    """ "hello/v1" entitles svc/hello; "helloworld/v1" and "hello-v2/v1" do not."""
    placements = {"n1": {"helloworld/v1": 1, "hello-v2/v1": 1}}
    assert not entitled("node/n1", HELLO, TD, placements)
    assert entitled("node/n1", HELLO, TD, {"n1": {"hello/v1": 1}})


def test_one_live_revision_is_enough() -> None:
    """A service is held while any of its revisions has instances on the node."""
    placements = {"n1": {"hello/v1": 0, "hello/v2": 1}}
    assert entitled("node/n1", HELLO, TD, placements)
    assert not entitled("node/n1", HELLO, TD, {"n1": {"hello/v1": 0, "hello/v2": 0}})


# ---------------------------------------------------------------------------------------------
# lagging and check_phase

NEW, OLD = "new0000000000000", "old0000000000000"


def _report(trusts: tuple[str, ...], leaves: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    return {
        "certs": {
            "trusts": list(trusts),
            "leaves": [{"issuer": issuer, "epoch": epoch} for issuer, epoch in leaves],
        }
    }


REPORTS: Mapping[str, Mapping[str, Any]] = {
    "node/b-old": _report((OLD,), ((OLD, 1),)),
    "node/a-both": _report((OLD, NEW), ((OLD, 1),)),
    "gateway": _report((OLD, NEW), ((NEW, 2), (NEW, 2))),
    "node/c-mixed": _report((NEW, OLD), ((NEW, 2), (OLD, 1))),
    "node/d-stale": _report((NEW,), ((NEW, 1),)),
    "node/e-new": _report((NEW,), ((NEW, 2),)),
    "node/f-empty": _report((NEW,), ()),
    "cli": {"version": "1"},  # reports no certificates: never counted
}


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("trust", ["node/b-old"]),
        ("reissue", ["node/a-both", "node/b-old", "node/c-mixed", "node/d-stale", "node/f-empty"]),
        ("retire", ["gateway", "node/a-both", "node/b-old", "node/c-mixed"]),
        ("requested", []),
        ("done", []),
    ],
)
def test_lagging_components_per_phase(phase: Phase, expected: list[str]) -> None:
    """Each phase lists, sorted, the certificate-reporting components not yet where it needs."""
    assert lagging(phase, NEW, REPORTS, epoch=2) == expected


def test_reissue_epoch_defaults_to_zero() -> None:
    """Without an epoch, reissue only asks that every leaf be issued by the new root."""
    assert lagging("reissue", NEW, REPORTS) == [
        "node/a-both",
        "node/b-old",
        "node/c-mixed",
        "node/f-empty",
    ]


def test_empty_certs_report_lags_every_phase_that_checks() -> None:
    """A component reporting a "certs" key with nothing in it lags trust, reissue and retire."""
    reports: dict[str, dict[str, Any]] = {"x": {"certs": None}, "y": {"certs": {}}}
    phases: tuple[Phase, ...] = ("trust", "reissue", "retire")
    for phase in phases:
        assert lagging(phase, NEW, reports) == ["x", "y"]


@pytest.mark.parametrize("phase", PHASES)
def test_check_phase_accepts_known_phases(phase: str) -> None:
    """Every known phase name comes back unchanged."""
    assert check_phase(phase) == phase


@pytest.mark.parametrize("value", ["", "Trust", "trust ", "rotate", "reissued"])
def test_check_phase_refuses_unknown(value: str) -> None:
    """An unknown phase is the user's error and names the bad value."""
    with pytest.raises(UserError, match="unknown rotation phase"):
        check_phase(value)


# ---------------------------------------------------------------------------------------------
# mtls_mode

HELLO_LABELS = {"app": "hello", "tier": "web"}


def _pa(name: str, mode: MtlsMode, *labels: tuple[str, str]) -> PeerAuthentication:
    return PeerAuthentication(name=name, match_labels=tuple(labels), mtls_mode=mode)


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        pytest.param([], "STRICT", id="default-strict"),
        pytest.param([_pa("mesh", "PERMISSIVE")], "PERMISSIVE", id="mesh-wide"),
        pytest.param([_pa("mesh", "UNSET")], "STRICT", id="mesh-wide-unset"),
        pytest.param(
            [_pa("mesh", "PERMISSIVE"), _pa("hello", "DISABLE", ("app", "hello"))],
            "DISABLE",
            id="specific-wins",
        ),
        pytest.param(
            [_pa("mesh", "PERMISSIVE"), _pa("hello", "STRICT", ("app", "hello"))],
            "STRICT",
            id="specific-strict-wins",
        ),
        pytest.param(
            [_pa("mesh", "PERMISSIVE"), _pa("hello", "UNSET", ("app", "hello"))],
            "PERMISSIVE",
            id="specific-unset-inherits",
        ),
        pytest.param(
            [_pa("hello", "UNSET", ("app", "hello"))], "STRICT", id="specific-unset-default"
        ),
        pytest.param(
            [_pa("mesh", "PERMISSIVE"), _pa("world", "DISABLE", ("app", "world"))],
            "PERMISSIVE",
            id="other-selector-ignored",
        ),
        pytest.param(
            [_pa("mesh", "PERMISSIVE"), _pa("x", "DISABLE", ("app", "hello"), ("tier", "db"))],
            "PERMISSIVE",
            id="partial-selector-ignored",
        ),
        pytest.param(
            [_pa("b", "DISABLE", ("app", "hello")), _pa("a", "PERMISSIVE", ("tier", "web"))],
            "PERMISSIVE",
            id="first-specific-by-name",
        ),
        pytest.param(
            [_pa("m2", "DISABLE"), _pa("m1", "PERMISSIVE")],
            "PERMISSIVE",
            id="first-mesh-wide-by-name",
        ),
    ],
)
def test_mtls_mode(policies: list[PeerAuthentication], expected: MtlsMode) -> None:
    """Specific beats mesh-wide, UNSET inherits, the first by name wins, default STRICT."""
    assert mtls_mode(policies, HELLO_LABELS) == expected


def test_selector_never_matches_unlabelled_workload() -> None:
    """A workload without labels gets only the mesh-wide mode."""
    policies = [_pa("mesh", "PERMISSIVE"), _pa("hello", "DISABLE", ("app", "hello"))]
    assert mtls_mode(policies, {}) == "PERMISSIVE"


MIXED = [
    _pa("a-mesh", "PERMISSIVE"),
    _pa("b-mesh", "DISABLE"),
    _pa("c-hello", "UNSET", ("app", "hello")),
    _pa("d-hello", "DISABLE", ("tier", "web")),
    _pa("e-world", "STRICT", ("app", "world")),
]


@given(st.permutations(MIXED))
def test_mtls_mode_does_not_depend_on_input_order(policies: list[PeerAuthentication]) -> None:
    """The first-by-name rule makes the result independent of the policies' order."""
    # c-hello is the first specific and UNSET, so the first mesh-wide (a-mesh) decides.
    assert mtls_mode(policies, HELLO_LABELS) == "PERMISSIVE"
    assert mtls_mode(policies, {"app": "world"}) == "STRICT"
