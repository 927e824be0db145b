"""Path normalisation at the edge: examples of each rule, and properties over arbitrary bytes."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.http.paths import SlashPolicy, normalize_path
from shoal.http.refusal import Refusal

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=500)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/", "/"),
        (b"/a/b", "/a/b"),
        (b"/a/b/", "/a/b/"),
        (b"//a///b//", "/a/b/"),
        (b"/a/./b/../c", "/a/c"),
        (b"/a/b/..", "/a/"),
        (b"/a/.", "/a/"),
        (b"/..", "/"),
        (b"/../../etc/passwd", "/etc/passwd"),
        (b"/%2e%2e/x", "/x"),
        (b"/a/%2E%2e/b", "/b"),
        (b"/.%2e/.well-known/x", "/.well-known/x"),
        (b"/%7euser/%41%62c", "/~user/Abc"),
        (b"/a%20b", "/a%20b"),
        (b"/a b", "/a%20b"),
        (b"/%3a%40", "/%3A%40"),
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b'/"<>', "/%22%3C%3E"),
        (b"/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+"),
        (b"/%25", "/%25"),
        (b"/%252e%252e/", "/%252e%252e/"),
    ],
)
def test_examples(raw: bytes, normal: str) -> None:
    """Each rule of the module docstring on a typical input."""
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"*",
        b"a/b",
        b"http://x/y",
        b"/a%",
        b"/a%4",
        b"/a%zz",
        b"/a%00",
        b"/a\x00b",
        b"/a\x7f",
        b"/a#frag",
        b"/a%2Fb",
        b"/a%2fb",
        b"/a%5Cb",
        b"/a\\b",
    ],
)
def test_refused(raw: bytes) -> None:
    """Non-absolute targets, bad escapes, NUL and control bytes, fragments, encoded slashes and
    backslashes are refused with 400 bad_path under the default policy."""
    result = normalize_path(raw)
    assert isinstance(result, Refusal)
    assert (result.status, result.cause) == (400, "bad_path")


@pytest.mark.parametrize(
    ("raw", "keep", "decode"),
    [
        (b"/a%2fb", "/a%2Fb", "/a/b"),
        (b"/a%5Cb", "/a%5Cb", "/a/b"),
        (b"/a\\b", "/a%5Cb", "/a/b"),
        (b"/a/..%2F..%2Fadmin", "/a/..%2F..%2Fadmin", "/admin"),
        (b"/a%2F%2F/b", "/a%2F%2F/b", "/a/b"),
    ],
)
def test_slash_policies(raw: bytes, keep: str, decode: str) -> None:
    """KEEP forwards encoded slashes and backslashes as one segment; DECODE makes them
    separators before dot segments are resolved."""
    assert normalize_path(raw, SlashPolicy.KEEP) == keep
    assert normalize_path(raw, SlashPolicy.DECODE) == decode


_PIECES = st.sampled_from(
    [
        b"/",
        b"//",
        b".",
        b"..",
        b"%2e",
        b"%2E%2e",
        b"a",
        b"B",
        b"%41",
        b"%7e",
        b"%2f",
        b"%5c",
        b"\\",
        b"%20",
        b" ",
        b"%25",
        b"%",
        b"%g1",
        b"\xc3\xa9",
        b";",
        b"=",
        b"~",
        b"#",
        b"\x00",
    ]
)
paths = st.lists(_PIECES, max_size=20).map(lambda parts: b"/" + b"".join(parts))
policies = st.sampled_from(list(SlashPolicy))


@PROPERTY
@given(paths, policies)
def test_idempotent(raw: bytes, policy: SlashPolicy) -> None:
    """A normal path is its own normal form."""
    normal = normalize_path(raw, policy)
    if isinstance(normal, str):
        assert normalize_path(normal.encode("ascii"), policy) == normal


@PROPERTY
@given(paths, policies)
def test_never_dot_segments_nor_above_root(raw: bytes, policy: SlashPolicy) -> None:
    """The result is absolute, has no empty, ``.`` or ``..`` segment (so, resolved under any
    root, it stays under it), and is printable ASCII with no backslash."""
    normal = normalize_path(raw, policy)
    if isinstance(normal, Refusal):
        return
    assert normal.startswith("/")
    segments = normal.split("/")[1:]
    inner = segments[:-1]  # the last one is empty for a trailing slash
    assert all(s not in ("", ".", "..") for s in inner)
    assert segments[-1] not in (".", "..")
    assert normal.isascii() and normal.isprintable() and "\\" not in normal and " " not in normal
    assert posixpath.normpath("/srv/root" + normal).startswith("/srv/root")


@PROPERTY
@given(paths)
def test_default_policy_never_forwards_slash_escapes(raw: bytes) -> None:
    """Under REJECT no %2F or %5C survives normalisation."""
    normal = normalize_path(raw)
    if isinstance(normal, str):
        assert "%2F" not in normal and "%5C" not in normal


@PROPERTY
@given(st.lists(st.sampled_from(["a", "bc", "d-e", "f_g", "~h", ".i"]), max_size=8))
def test_plain_paths_unchanged(segments: list[str]) -> None:
    """Paths already in normal form (the common case, taken by the fast path) come back as they
    are."""
    path = "/" + "/".join(segments)
    assert normalize_path(path.encode()) == path
