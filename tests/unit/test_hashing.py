"""Consistent hashing (sticky sessions): keys from requests, rendezvous choice, cookies."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.hashing import hash_key, new_cookie, rendezvous, set_cookie
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import ConsistentHash

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)


def endpoint(n: int) -> Endpoint:
    return Endpoint(
        id=f"i{n}", service="s", revision="v1", node="n", address="127.0.0.1", port=20000 + n
    )


@PROPERTY
@given(
    key=st.text(min_size=1, max_size=20),
    count=st.integers(2, 12),
    gone=st.integers(0, 11),
)
def test_a_key_moves_only_when_its_instance_goes(key: str, count: int, gone: int) -> None:
    """Removing any other candidate leaves a key where it was; removing its own moves it."""
    candidates = [endpoint(n) for n in range(count)]
    owner = rendezvous(candidates, key)
    rest = [e for e in candidates if e != candidates[gone % count]]
    if candidates[gone % count] != owner:
        assert rendezvous(rest, key) == owner
    else:
        assert rendezvous(rest, key) != owner


def test_keys_come_from_the_request() -> None:
    """A header, a cookie, a query parameter or the client's address; None when absent."""
    fields = {"x-user": "ana", "cookie": "a=1; session=abc; b=2"}
    assert hash_key(ConsistentHash(header="x-user"), fields, None, "") == "ana"
    assert hash_key(ConsistentHash(cookie="session"), fields, None, "") == "abc"
    assert hash_key(ConsistentHash(cookie="other"), fields, None, "") is None
    assert hash_key(ConsistentHash(query_parameter="u"), {}, None, "x=1&u=bo%20b") == "bo b"
    assert hash_key(ConsistentHash(source_ip=True), {}, "10.0.0.7", "") == "10.0.0.7"


def test_a_generated_cookie() -> None:
    """A fresh key is random; the cookie carries its ttl and path."""
    spec = ConsistentHash(cookie="session", cookie_ttl=3600.0, cookie_path="/")
    value = new_cookie(random.Random(1))
    assert len(value) == 16 and value != new_cookie(random.Random(2))
    assert set_cookie(spec, value) == f"session={value}; Max-Age=3600; Path=/; HttpOnly".encode()
