"""Request path normalisation: one canonical form that routes, authz and the upstream all see.

hypercorn hands the app ``scope["path"]`` percent-decoded but not normalised (``%2e%2e`` becomes
``..``, ``%2F`` becomes ``/``), so a route or policy on ``/admin`` could be dodged with
``/public/%2e%2e/admin`` while the upstream resolves it to ``/admin``. The gateway instead
normalises ``raw_path`` once (RFC 3986 §6.2.2, as Envoy's ``normalize_path`` and
``merge_slashes``) and forwards exactly that:

1. percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded; every other
   escape is kept, with upper-case hex digits;
2. bytes that may not appear in a path (space, ``"``, ``<``, non-ASCII, ...) are percent-encoded;
   control characters, ``%00`` and ``#`` are refused, as is a malformed escape;
3. ``.`` and ``..`` segments are resolved (never above the root) and empty segments merged.

Encoded slashes (``%2F``) and backslashes (``%5C`` or a raw ``\\``) follow
:class:`SlashPolicy`; the default refuses them with 400, like Envoy's
``path_with_escaped_slashes_action: REJECT_REQUEST``, because servers disagree on whether they
separate segments. The result is an ASCII ``str`` that :func:`normalize_path` maps to itself.
"""

from __future__ import annotations

import enum
import re

from shoal.http.refusal import BAD_PATH, Refusal


class SlashPolicy(enum.Enum):
    """What to do with ``%2F``, ``%5C`` and ``\\`` in a path."""

    REJECT = "reject"  # 400 bad_path (default)
    KEEP = "keep"  # forward them encoded (%2F, %5C): the upstream decides, routes see one segment
    DECODE = "decode"  # treat them as "/" before resolving dot segments and merging slashes


# A path that is already normal: non-empty segments made of unreserved characters, sub-delims,
# ':' and '@', none starting with '.', and an optional trailing slash. Most real paths are.
_NORMAL = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")

_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar without '%' (escapes are handled apart), plus the segment separator.
_LITERAL = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_SLASH_ESCAPES = frozenset({0x2F, 0x5C})


def _bad(message: str) -> Refusal:
    return Refusal(400, BAD_PATH, message)


def _decode(raw: bytes, slashes: SlashPolicy) -> str | Refusal:
    """Step 1 and 2: one pass over the bytes, escapes decoded or canonicalised."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # '%'
            if i + 2 >= n:
                return _bad("truncated percent-escape")
            h1, h2 = raw[i + 1], raw[i + 2]
            if h1 not in _HEX or h2 not in _HEX:
                return _bad("malformed percent-escape")
            value = int(raw[i + 1 : i + 3], 16)
            i += 3
            if value in _UNRESERVED:
                out.append(chr(value))
            elif value == 0:
                return _bad("encoded NUL in path")
            elif value in _SLASH_ESCAPES:
                if slashes is SlashPolicy.REJECT:
                    return _bad("encoded slash or backslash in path")
                out.append("/" if slashes is SlashPolicy.DECODE else f"%{value:02X}")
            else:
                out.append(f"%{value:02X}")
            continue
        i += 1
        if b in _LITERAL:
            out.append(chr(b))
        elif b == 0x5C:  # '\'
            if slashes is SlashPolicy.REJECT:
                return _bad("backslash in path")
            out.append("/" if slashes is SlashPolicy.DECODE else "%5C")
        elif b < 0x20 or b == 0x7F:
            return _bad("control character in path")
        elif b == 0x23:  # '#'
            return _bad("fragment in request target")
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def _resolve(path: str) -> str:
    """Step 3: dot segments (RFC 3986 §5.2.4, clamped at the root) and merged slashes."""
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    if not kept:
        return "/"
    trailing = segments[-1] in ("", ".", "..")
    return "/" + "/".join(kept) + ("/" if trailing else "")


def normalize_path(raw_path: bytes, slashes: SlashPolicy = SlashPolicy.REJECT) -> str | Refusal:
    """``raw_path`` (no query) in normal form, or why it is refused (400 ``bad_path``)."""
    if not raw_path.startswith(b"/"):
        return _bad("request target is not an absolute path")
    if _NORMAL.fullmatch(raw_path):
        return raw_path.decode("ascii")
    decoded = _decode(raw_path, slashes)
    if isinstance(decoded, Refusal):
        return decoded
    return _resolve(decoded)
