"""Route matching: Istio's match blocks compiled into checks, and what a request matched.

Within a VirtualService the ``http[]`` rules are tried in order and the first match wins; a rule
matches if any of its match blocks does (a rule without blocks matches everything), a block if
all its conditions hold. :func:`compile_virtual_service` flattens a VirtualService into its
:class:`MatchBlock` values once per snapshot, each carrying the :class:`RouteMatch` it answers
with, so matching a request allocates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from shoal.http.headers import HeaderEdit
from shoal.mesh.clusters import Cluster, ClusterBuilder
from shoal.resources.model import HTTPMatchRequest, HTTPRoute, StringMatch, VirtualService

Check = Callable[[str], bool]
"""A compiled condition on one string of the request."""

NO_LABELS: Mapping[str, str] = {}
"""The labels of a caller that is no workload (the gateway)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """What a request matched: the rule, the match block, and the weighted clusters to pick from.

    ``virtual_service`` and ``route_index`` are None for the default route of a Service that no
    VirtualService covers. ``match_index``/``match`` are None when the rule has no match blocks.
    ``clusters`` and ``weights`` are parallel; ``mirror`` is the resolved ``route.mirror``.
    """

    virtual_service: str | None
    route_index: int | None
    route: HTTPRoute
    match_index: int | None = None
    match: HTTPMatchRequest | None = None
    clusters: tuple[Cluster, ...] = ()
    weights: tuple[int, ...] = ()
    mirror: Cluster | None = None
    # Per destination (parallel to ``clusters``): the header edits of the request sent and of
    # the response returned, the route's then the destination's; empty when none are set.
    edits: tuple[tuple[tuple[HeaderEdit, ...], tuple[HeaderEdit, ...]], ...] = ()
    cors_origins: tuple[Check, ...] = ()  # the route's corsPolicy.allowOrigins, compiled
    # The route as metrics and logs name it, ``<VirtualService>/<http[] name>`` (its index when
    # unnamed), made once per config change; empty for a Service's default route.
    name: str = ""

    @property
    def matched_prefix(self) -> str | None:
        """The URI prefix the request matched by, when the matching block used ``uri.prefix``."""
        if self.match is None or self.match.uri is None:
            return None
        return self.match.uri.prefix

    def rewrite_path(self, path: str) -> str:
        """``path`` (no query) after the route's ``rewrite.uri``; see :func:`apply_rewrite`."""
        return apply_rewrite(self.route, self.matched_prefix, path)


def apply_rewrite(route: HTTPRoute, matched_prefix: str | None, path: str) -> str:
    """Istio's ``rewrite.uri``: replace the matched prefix, or the whole path if not prefix-matched.

    ``path`` excludes the query string; the caller re-appends it. Like Envoy, no slash is added
    or removed: prefix ``/api/`` rewritten to ``/`` turns ``/api/x`` into ``/x``.
    """
    rewrite = route.rewrite
    if rewrite is None or rewrite.uri is None:
        return path
    if matched_prefix is not None:
        return rewrite.uri + path[len(matched_prefix) :]
    return rewrite.uri


def normalize_host(host: str) -> str:
    """A Host/:authority value as routing sees it: lower case, no port, no trailing dot."""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal: the port follows the bracket
        end = host.find("]")
        return host if end == -1 else host[: end + 1]
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True, slots=True)
class MatchBlock:
    """One compiled match block; None checks always hold. ``result`` is returned on a match."""

    result: RouteMatch
    uri: Check | None = None
    method: Check | None = None
    authority: Check | None = None
    headers: tuple[tuple[str, Check | None], ...] = ()
    query_params: tuple[tuple[str, Check | None], ...] = ()
    source_labels: tuple[tuple[str, str], ...] = ()

    def matches(
        self,
        path: str,
        method: str,
        authority: str,
        headers: Mapping[str, str],
        query: str = "",
        source: Mapping[str, str] = NO_LABELS,
    ) -> bool:
        """Whether every condition of the block holds for the request (``query``: the raw
        query string, parsed only by a block that matches on it; ``source``: the calling
        workload's labels)."""
        for label, wanted in self.source_labels:
            if source.get(label) != wanted:
                return False
        if self.uri is not None and not self.uri(path):
            return False
        if self.method is not None and not self.method(method):
            return False
        if self.authority is not None and not self.authority(authority):
            return False
        for name, check in self.headers:
            value = headers.get(name)
            if value is None or (check is not None and not check(value)):
                return False
        if self.query_params:
            params = dict(parse_qsl(query, keep_blank_values=True))
            for name, check in self.query_params:
                value = params.get(name)
                if value is None or (check is not None and not check(value)):
                    return False
        return True


def compile_string_match(
    match: StringMatch | None, where: str, *, ignore_case: bool = False
) -> Check | None:
    """A check for a StringMatch; None for an absent or empty one (for a header: presence only).

    ``ignore_case`` applies to exact and prefix only, as Istio documents for ``ignoreUriCase``.
    Regexes must match the whole value (RE2 full match in Istio, ``re.fullmatch`` here).
    """
    if match is None:
        return None
    if match.exact is not None:
        exact = match.exact
        if ignore_case:
            folded = exact.lower()
            return lambda value: value.lower() == folded
        return lambda value: value == exact
    if match.prefix is not None:
        prefix = match.prefix
        if ignore_case:
            folded = prefix.lower()
            return lambda value: value.lower().startswith(folded)
        return lambda value: value.startswith(prefix)
    if match.regex is not None:
        try:
            pattern = re.compile(match.regex)
        except re.error as exc:
            raise ValueError(f"{where}.regex: invalid regex {match.regex!r}: {exc}") from None
        return lambda value: pattern.fullmatch(value) is not None
    return None


def compile_block(block: HTTPMatchRequest, where: str, result: RouteMatch) -> MatchBlock:
    """A match block compiled; ``where`` names it in errors (a regex that does not compile)."""
    return MatchBlock(
        result,
        uri=compile_string_match(block.uri, f"{where}.uri", ignore_case=block.ignore_uri_case),
        method=compile_string_match(block.method, f"{where}.method"),
        authority=compile_string_match(block.authority, f"{where}.authority"),
        headers=tuple(
            (name.lower(), compile_string_match(check, f"{where}.headers.{name}"))
            for name, check in block.headers
        ),
        query_params=tuple(
            (name, compile_string_match(check, f"{where}.queryParams.{name}"))
            for name, check in block.query_params
        ),
        source_labels=block.source_labels,
    )


def _edits(route: HTTPRoute) -> tuple[tuple[tuple[HeaderEdit, ...], tuple[HeaderEdit, ...]], ...]:
    """:attr:`RouteMatch.edits` of ``route`` (empty when it and its destinations edit none)."""
    levels = [(route.headers, dest.headers) for dest in route.route]
    if not any(rules is not None for level in levels for rules in level):
        return ()
    return tuple(
        (
            tuple(r.request.as_bytes() for r in level if r is not None and r.request),
            tuple(r.response.as_bytes() for r in level if r is not None and r.response),
        )
        for level in levels
    )


def _origins(route: HTTPRoute, where: str) -> tuple[Check, ...]:
    if route.cors is None:
        return ()
    checks = (
        compile_string_match(match, f"{where}.corsPolicy.allowOrigins[{i}]")
        for i, match in enumerate(route.cors.allow_origins)
    )
    return tuple(check for check in checks if check is not None)


def compile_virtual_service(vs: VirtualService, clusters: ClusterBuilder) -> tuple[MatchBlock, ...]:
    """The VirtualService's match blocks flattened in order (the first to match wins), their
    destinations resolved by ``clusters``."""
    blocks: list[MatchBlock] = []
    for index, route in enumerate(vs.http):
        destinations = tuple(clusters.cluster(dest.destination) for dest in route.route)
        weights = tuple(dest.weight for dest in route.route)
        mirror = clusters.cluster(route.mirror) if route.mirror is not None else None
        result = RouteMatch(
            virtual_service=vs.name,
            route_index=index,
            name=f"{vs.name}/{route.name or index}",
            route=route,
            clusters=destinations,
            weights=weights,
            mirror=mirror,
            edits=_edits(route),
            cors_origins=_origins(route, f"VirtualService {vs.name}: http[{index}]"),
        )
        if not route.match:
            blocks.append(MatchBlock(result))
            break  # matches everything: later rules are unreachable
        for match_index, block in enumerate(route.match):
            where = f"VirtualService {vs.name}: http[{index}].match[{match_index}]"
            matched = replace(result, match_index=match_index, match=block)
            blocks.append(compile_block(block, where, matched))
    return tuple(blocks)
