"""SPIFFE IDs: shoal.identity.spiffe."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import UserError
from shoal.identity.spiffe import (
    InvalidSpiffeId,
    SpiffeId,
    gateway_id,
    node_id,
    parse_spiffe,
    peer_identity,
    service_id,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)

trust_domains = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(
    lambda segment: segment not in (".", "..")
)
paths = st.lists(segments, max_size=5).map(lambda parts: "".join(f"/{p}" for p in parts))
spiffe_ids = st.builds(lambda td, path: SpiffeId(trust_domain=td, path=path), trust_domains, paths)


@PROPERTY
@given(spiffe_ids)
def test_parse_of_str_is_the_same_id(spiffe_id: SpiffeId) -> None:
    """parse_spiffe(str(id)) == id for every valid generated ID."""
    assert parse_spiffe(str(spiffe_id)) == spiffe_id


def test_parse_splits_trust_domain_and_path() -> None:
    """A service ID parses into its trust domain, path, segments and service name."""
    parsed = parse_spiffe("spiffe://example.org/svc/hello")
    assert parsed == SpiffeId(trust_domain="example.org", path="/svc/hello")
    assert parsed.segments == ("svc", "hello")
    assert parsed.service == "hello"
    assert parse_spiffe("spiffe://example.org") == SpiffeId(trust_domain="example.org")


def test_constructors_build_shoal_identities() -> None:
    """service_id, gateway_id and node_id spell the mesh's SPIFFE identities."""
    assert str(service_id("cluster.local", "hello")) == "spiffe://cluster.local/svc/hello"
    assert str(gateway_id("cluster.local")) == "spiffe://cluster.local/gateway"
    assert str(node_id("cluster.local", "node-1")) == "spiffe://cluster.local/node/node-1"
    assert gateway_id("cluster.local").service is None


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe://",
        "spiffe:///svc/hello",
        "SPIFFE://example.org/svc/hello",
        "https://example.org/svc/hello",
        "spiffe:example.org/svc/hello",
        "spiffe://Example.org/svc/hello",
        "spiffe://example.org:8443/svc/hello",
        "spiffe://user@example.org/svc/hello",
        "spiffe://example.org/",
        "spiffe://example.org/svc/",
        "spiffe://example.org//svc",
        "spiffe://example.org/svc/./hello",
        "spiffe://example.org/svc/../hello",
        "spiffe://example.org/svc/hel%20lo",
        "spiffe://example.org/svc/hello?x=1",
        "spiffe://example.org/svc/hello#frag",
        "spiffe://example.org/svc/hel lo",
        "spiffe://exa mple.org/svc/hello",
        "spiffe://example.org/svc/héllo",
        "spiffe://" + "a" * 256,
        "spiffe://example.org/" + "a" * 2048,
    ],
)
def test_invalid_forms_are_rejected(uri: str) -> None:
    """Every form the SPIFFE standard forbids raises InvalidSpiffeId carrying the value."""
    with pytest.raises(InvalidSpiffeId) as caught:
        parse_spiffe(uri)
    assert caught.value.value == uri
    assert isinstance(caught.value, UserError)


def test_constructors_validate_their_parts() -> None:
    """SpiffeId and its helpers refuse parts that would spell an invalid ID."""
    with pytest.raises(InvalidSpiffeId):
        service_id("example.org", "a/../b")
    with pytest.raises(InvalidSpiffeId):
        node_id("Example.org", "n1")
    with pytest.raises(InvalidSpiffeId):
        SpiffeId(trust_domain="example.org", path="svc/hello")


def test_peer_identity_reads_the_one_uri_san() -> None:
    """peer_identity finds the URI SAN among what getpeercert() returns."""
    peercert = {
        "subject": ((("organizationName", "Shoal"),),),
        "subjectAltName": (("URI", "spiffe://example.org/svc/hello"),),
    }
    assert peer_identity(peercert) == service_id("example.org", "hello")


@pytest.mark.parametrize(
    "peercert",
    [
        None,
        {},
        {"subject": ()},
        {"subjectAltName": (("DNS", "hello.example.org"),)},
        {"subjectAltName": (("URI", "https://example.org/"),)},
        {
            "subjectAltName": (
                ("URI", "spiffe://example.org/svc/a"),
                ("URI", "spiffe://example.org/svc/b"),
            )
        },
        {"subjectAltName": "URI:spiffe://example.org/svc/a"},
    ],
)
def test_peer_identity_is_none_without_exactly_one_valid_spiffe_uri(
    peercert: dict[str, object] | None,
) -> None:
    """No certificate, no URI SAN, several, or an invalid one: no identity."""
    assert peer_identity(peercert) is None
