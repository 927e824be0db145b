"""VirtualService specs: Istio's field names to model values and back.

Only the subset of ``networking.istio.io`` HTTP routing that Shoal implements is accepted (match,
weighted route, timeout, retries, fault, rewrite, mirror and mirrorPercentage, header
operations on the route and on each destination); any other Istio field (``corsPolicy``,
``tcp``...) is an error naming its path rather than something quietly ignored.
:func:`virtual_service_spec` writes the canonical spec back (defaults omitted), and
:func:`parse_virtual_service` reads it to an equal value.
"""

from __future__ import annotations

import base64
import re

from shoal.errors import ManifestError
from shoal.resources.fields import (
    Section,
    boolean,
    choice,
    dns_label,
    elements,
    entries,
    format_duration,
    host_name,
    integer,
    labels,
    list_of,
    matching,
    parse_duration,
    percent,
    positive_duration,
    put,
    put_duration,
    section,
    string,
    text,
)
from shoal.resources.model import (
    NAMESPACE,
    CorsPolicy,
    Destination,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    HeaderRules,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRoute,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    VirtualService,
)

__all__ = ["RETRY_CONDITIONS", "parse_virtual_service", "virtual_service_spec"]

_RETRIES = Retries()

# Envoy's retry conditions (x-envoy-retry-on and x-envoy-retry-grpc-on); a bare status code is
# accepted too, as Istio does.
RETRY_CONDITIONS = frozenset(
    "5xx gateway-error reset connect-failure envoy-ratelimited retriable-4xx refused-stream "
    "retriable-status-codes retriable-headers cancelled deadline-exceeded internal "
    "resource-exhausted unavailable".split()
)

# The Istio fields Shoal implements, per object; any other key is an error.
_HTTP_ROUTE = tuple(
    "name match route timeout retries fault rewrite mirror mirrorPercentage headers redirect "
    "directResponse corsPolicy".split()
)
# Fields a route may not change: the framing and the connection's, and what routing needs.
_PROTECTED = frozenset(
    "host content-length transfer-encoding connection keep-alive proxy-connection te trailer "
    "upgrade x-shoal-instance x-shoal-cause".split()
)
_MATCH = tuple("name uri method authority headers queryParams sourceLabels ignoreUriCase".split())

_header_name = matching(
    re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"), "an HTTP header name", max_length=256
)


def parse_virtual_service(name: str, value: object) -> VirtualService:
    """The VirtualService named ``name`` whose ``spec`` is ``value``."""
    spec = Section(value, "spec", ("hosts", "gateways", "http"))
    return VirtualService(
        name=name,
        hosts=spec.need("hosts", list_of(host_name, min_items=1)),
        gateways=spec.get("gateways", list_of(_gateway_name), ()),
        http=spec.need("http", list_of(_http_route, min_items=1)),
    )


def _gateway_name(value: object, field: str) -> str:
    """A Gateway a VirtualService binds to, ``[namespace/]name``, or ``mesh`` (east-west)."""
    name = string(value, field)
    namespace, slash, bare = name.rpartition("/")
    if slash and namespace not in (".", NAMESPACE):
        raise ManifestError(
            f"names namespace {namespace}: Shoal serves one namespace, {NAMESPACE}",
            field=field,
            value=name,
        )
    return bare if slash else name


def _http_route(value: object, field: str) -> HTTPRoute:
    rule = Section(value, field, _HTTP_ROUTE)
    fault = rule.get("fault", _fault)
    route: tuple[RouteDestination, ...] = rule.get("route", _route, ())
    redirect = rule.get("redirect", _redirect)
    direct = rule.get("directResponse", _direct_response)
    actions = [key for key in ("route", "redirect", "directResponse") if rule.has(key)]
    if len(actions) > 1:
        raise ManifestError(
            f"route, redirect and directResponse exclude each other (got {', '.join(actions)})",
            field=rule.at(actions[1]),
            value=rule.raw(actions[1]),
        )
    mirror = rule.get("mirror", _destination)
    if mirror is None and rule.has("mirrorPercentage"):
        raise ManifestError(
            "mirrorPercentage needs mirror", field=rule.at("mirrorPercentage"), value=value
        )
    if not route and redirect is None and direct is None and (fault is None or fault.abort is None):
        raise ManifestError(
            "at least one destination is required (unless redirect, directResponse or "
            "fault.abort is set)",
            field=rule.at("route"),
        )
    return HTTPRoute(
        name=rule.get("name", string),
        match=rule.get("match", list_of(_match), ()),
        route=route,
        timeout=rule.get("timeout", positive_duration),
        retries=rule.get("retries", _retries),
        fault=fault,
        rewrite=rule.get("rewrite", _rewrite),
        mirror=mirror,
        mirror_percentage=rule.get("mirrorPercentage", _percentage, 100.0),
        headers=rule.get("headers", _header_rules),
        redirect=redirect,
        direct_response=direct,
        cors=rule.get("corsPolicy", _cors),
    )


_OLD_ORIGIN = (
    "deprecated in Istio and not read by Shoal: write allowOrigins, a list of exact/prefix/regex "
    "matches"
)


def _cors(value: object, field: str) -> CorsPolicy:
    cors = Section(
        value,
        field,
        "allowOrigins allowMethods allowHeaders exposeHeaders maxAge allowCredentials".split(),
        {"allowOrigin": _OLD_ORIGIN},
    )
    return CorsPolicy(
        allow_origins=cors.get("allowOrigins", list_of(_string_match), ()),
        allow_methods=cors.get("allowMethods", list_of(_method), ()),
        allow_headers=cors.get("allowHeaders", list_of(_header_name), ()),
        expose_headers=cors.get("exposeHeaders", list_of(_header_name), ()),
        max_age=cors.get("maxAge", parse_duration),
        allow_credentials=cors.get("allowCredentials", boolean, False),
    )


_method = matching(re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"), "an HTTP method", max_length=32)


def _redirect(value: object, field: str) -> HTTPRedirect:
    redirect = Section(
        value, field, ("uri", "authority", "port", "scheme", "redirectCode", "derivePort")
    )
    if redirect.has("derivePort"):
        raise ManifestError(
            "not supported by Shoal: give port, or leave it out to keep the request's",
            field=redirect.at("derivePort"),
            value=redirect.raw("derivePort"),
        )
    return HTTPRedirect(
        uri=redirect.get("uri", _path),
        authority=redirect.get("authority", host_name),
        port=redirect.get("port", integer(1, 65535)),
        scheme=redirect.get("scheme", choice({"http": "http", "https": "https"})),
        redirect_code=redirect.get("redirectCode", _redirect_code, 301),
    )


def _redirect_code(value: object, field: str) -> int:
    code = integer(300, 399)(value, field)
    if code not in (301, 302, 303, 307, 308):
        raise ManifestError("must be 301, 302, 303, 307 or 308", field=field, value=value)
    return code


def _path(value: object, field: str) -> str:
    path = string(value, field)
    if not path.startswith("/") or not _FIELD_VALUE.fullmatch(path) or " " in path:
        raise ManifestError("must be a path starting with /", field=field, value=value)
    return path


def _direct_response(value: object, field: str) -> HTTPDirectResponse:
    direct = Section(value, field, ("status", "body"))
    status = direct.need("status", integer(200, 599))
    body = direct.get("body", section(("string", "bytes")))
    if body is None:
        return HTTPDirectResponse(status=status)
    if body.has("string") == body.has("bytes"):
        raise ManifestError("must set one of string or bytes", field=body.path, value=value)
    if body.has("string"):
        written = body.need("string", text).encode()
        return HTTPDirectResponse(status=status, body=written)
    return HTTPDirectResponse(status=status, body=body.need("bytes", _base64), text=False)


def _base64(value: object, field: str) -> bytes:
    try:
        return base64.b64decode(string(value, field), validate=True)
    except ValueError:
        raise ManifestError("must be base64", field=field, value=value) from None


def _match(value: object, field: str) -> HTTPMatchRequest:
    match = Section(value, field, _MATCH)
    return HTTPMatchRequest(
        name=match.get("name", string),
        uri=match.get("uri", _string_match),
        method=match.get("method", _string_match),
        authority=match.get("authority", _string_match),
        headers=match.get("headers", _headers, ()),
        query_params=match.get("queryParams", _query_params, ()),
        source_labels=match.get("sourceLabels", labels, ()),
        ignore_uri_case=match.get("ignoreUriCase", boolean, False),
    )


def _headers(value: object, field: str) -> tuple[tuple[str, StringMatch], ...]:
    """Header matches keyed by lower-case name; two spellings of one name are an error."""
    result: dict[str, StringMatch] = {}
    for key, item, path in entries(value, field):
        name = _header_name(key, path).lower()
        if name in result:
            raise ManifestError("header is matched twice", field=path, value=key)
        result[name] = _string_match(item, path)
    return tuple(sorted(result.items()))


def _query_params(value: object, field: str) -> tuple[tuple[str, StringMatch], ...]:
    """Query parameter matches by name (as written: query names are case-sensitive)."""
    matches = ((key, _string_match(item, path)) for key, item, path in entries(value, field))
    return tuple(sorted(matches, key=lambda pair: pair[0]))


def _string_match(value: object, field: str) -> StringMatch:
    match = Section(value, field, ("exact", "prefix", "regex"))
    if sum(match.has(key) for key in ("exact", "prefix", "regex")) != 1:
        raise ManifestError(
            "must set exactly one of exact, prefix or regex", field=field, value=value
        )
    regex = match.get("regex", text)
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as err:
            raise ManifestError(
                f"invalid regular expression: {err}", field=match.at("regex"), value=regex
            ) from None
    return StringMatch(
        exact=match.get("exact", text), prefix=match.get("prefix", text), regex=regex
    )


def _route(value: object, field: str) -> tuple[RouteDestination, ...]:
    """Weighted destinations: a lone one takes all traffic (its weight is 100, as Istio assumes);
    several default to 0 each and must sum to exactly 100."""
    parsed = []
    for item, path in elements(value, field):
        entry = Section(item, path, ("destination", "weight", "headers"))
        parsed.append(
            (
                entry.need("destination", _destination),
                entry.get("weight", integer(0, 100)),
                entry.get("headers", _header_rules),
            )
        )
    if len(parsed) == 1:
        destination, _, headers = parsed[0]
        return (RouteDestination(destination=destination, weight=100, headers=headers),)
    routes = tuple(
        RouteDestination(destination=destination, weight=weight or 0, headers=headers)
        for destination, weight, headers in parsed
    )
    total = sum(route.weight for route in routes)
    if routes and total != 100:
        raise ManifestError("destination weights must sum to 100", field=field, value=total)
    return routes


def _destination(value: object, field: str) -> Destination:
    destination = Section(value, field, ("host", "subset", "port"))
    port = destination.get("port", section(("number",)))
    return Destination(
        host=destination.need("host", host_name),
        subset=destination.get("subset", dns_label),
        port=None if port is None else port.need("number", integer(1, 65535)),
    )


def _header_rules(value: object, field: str) -> HeaderRules:
    rules = Section(value, field, ("request", "response"))
    return HeaderRules(
        request=rules.get("request", _header_operations),
        response=rules.get("response", _header_operations),
    )


def _header_operations(value: object, field: str) -> HeaderOperations:
    operations = Section(value, field, ("set", "add", "remove"))
    return HeaderOperations(
        set=operations.get("set", _header_values, ()),
        add=operations.get("add", _header_values, ()),
        remove=operations.get("remove", list_of(_changeable), ()),
    )


def _header_values(value: object, field: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_changeable(key, path), _header_value(item, path))
        for key, item, path in entries(value, field)
    )


_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _header_value(value: object, field: str) -> str:
    written = text(value, field)
    if not _FIELD_VALUE.fullmatch(written):
        raise ManifestError(
            "must be a header value (letters, digits, punctuation, spaces; no line breaks)",
            field=field,
            value=value,
        )
    return written


def _changeable(value: object, field: str) -> str:
    """A header name a route may set, add or remove (lower-cased)."""
    name = _header_name(value, field).lower()
    if name in _PROTECTED:
        raise ManifestError(
            "a route cannot change this header (framing, connection or routing; to change the "
            "Host, use rewrite.authority)",
            field=field,
            value=value,
        )
    return name


def _retries(value: object, field: str) -> Retries:
    retries = Section(value, field, ("attempts", "perTryTimeout", "retryOn", "retryNonIdempotent"))
    return Retries(
        attempts=retries.get("attempts", integer(0), _RETRIES.attempts),
        per_try_timeout=retries.get("perTryTimeout", positive_duration),
        retry_on=retries.get("retryOn", _retry_on, _RETRIES.retry_on),
        non_idempotent=retries.get("retryNonIdempotent", boolean, False),
    )


def _retry_on(value: object, field: str) -> tuple[str, ...]:
    conditions = tuple(part.strip() for part in string(value, field).split(","))
    for condition in conditions:
        if condition not in RETRY_CONDITIONS and not (
            condition.isdigit() and 100 <= int(condition) <= 599
        ):
            raise ManifestError(
                f"unknown retry condition {condition!r}; expected a comma-separated list of "
                f"{', '.join(sorted(RETRY_CONDITIONS))} or HTTP status codes",
                field=field,
                value=value,
            )
    return conditions


def _fault(value: object, field: str) -> Fault:
    fault = Section(value, field, ("delay", "abort"))
    if not (fault.has("delay") or fault.has("abort")):
        raise ManifestError("must set delay or abort", field=field, value=value)
    return Fault(delay=fault.get("delay", _fault_delay), abort=fault.get("abort", _fault_abort))


def _fault_delay(value: object, field: str) -> FaultDelay:
    delay = Section(value, field, ("percentage", "fixedDelay"))
    return FaultDelay(
        percentage=delay.get("percentage", _percentage, 100.0),
        fixed_delay=delay.need("fixedDelay", parse_duration),
    )


def _fault_abort(value: object, field: str) -> FaultAbort:
    abort = Section(value, field, ("percentage", "httpStatus"))
    return FaultAbort(
        percentage=abort.get("percentage", _percentage, 100.0),
        http_status=abort.need("httpStatus", integer(200, 599)),
    )


def _percentage(value: object, field: str) -> float:
    return Section(value, field, ("value",)).need("value", percent)


def _rewrite(value: object, field: str) -> Rewrite:
    rewrite = Section(value, field, ("uri", "authority"))
    if not (rewrite.has("uri") or rewrite.has("authority")):
        raise ManifestError("must set uri or authority", field=field, value=value)
    return Rewrite(uri=rewrite.get("uri", string), authority=rewrite.get("authority", string))


def virtual_service_spec(service: VirtualService) -> dict[str, object]:
    """The canonical ``spec`` of a VirtualService, in Istio's field names."""
    spec: dict[str, object] = {"hosts": list(service.hosts)}
    put(spec, "gateways", list(service.gateways), [])
    spec["http"] = [_http_route_doc(rule) for rule in service.http]
    return spec


def _http_route_doc(rule: HTTPRoute) -> dict[str, object]:
    out: dict[str, object] = {}
    put(out, "name", rule.name)
    put(out, "match", [_match_doc(match) for match in rule.match], [])
    # Weights are always written: an omitted one would read back as 100 or as 0.
    put(
        out,
        "route",
        [_route_destination_doc(route) for route in rule.route],
        [],
    )
    put_duration(out, "timeout", rule.timeout)
    if rule.retries is not None:
        retries: dict[str, object] = {}
        put(retries, "attempts", rule.retries.attempts, _RETRIES.attempts)
        put_duration(retries, "perTryTimeout", rule.retries.per_try_timeout)
        put(retries, "retryOn", ",".join(rule.retries.retry_on), ",".join(_RETRIES.retry_on))
        put(retries, "retryNonIdempotent", rule.retries.non_idempotent, False)
        out["retries"] = retries
    if rule.fault is not None:
        out["fault"] = _fault_doc(rule.fault)
    if rule.rewrite is not None:
        rewrite: dict[str, object] = {}
        put(rewrite, "uri", rule.rewrite.uri)
        put(rewrite, "authority", rule.rewrite.authority)
        out["rewrite"] = rewrite
    if rule.mirror is not None:
        out["mirror"] = _destination_doc(rule.mirror)
        put(out, "mirrorPercentage", {"value": rule.mirror_percentage}, {"value": 100.0})
    if rule.headers is not None:
        out["headers"] = _header_rules_doc(rule.headers)
    if rule.cors is not None:
        cors: dict[str, object] = {}
        put(cors, "allowOrigins", [_string_match_doc(m) for m in rule.cors.allow_origins], [])
        put(cors, "allowMethods", list(rule.cors.allow_methods), [])
        put(cors, "allowHeaders", list(rule.cors.allow_headers), [])
        put(cors, "exposeHeaders", list(rule.cors.expose_headers), [])
        put_duration(cors, "maxAge", rule.cors.max_age)
        put(cors, "allowCredentials", rule.cors.allow_credentials, False)
        out["corsPolicy"] = cors
    if rule.redirect is not None:
        redirect: dict[str, object] = {}
        put(redirect, "uri", rule.redirect.uri)
        put(redirect, "authority", rule.redirect.authority)
        put(redirect, "port", rule.redirect.port)
        put(redirect, "scheme", rule.redirect.scheme)
        put(redirect, "redirectCode", rule.redirect.redirect_code, 301)
        out["redirect"] = redirect
    if rule.direct_response is not None:
        direct = rule.direct_response
        answer: dict[str, object] = {"status": direct.status}
        if direct.body or not direct.text:
            body = direct.body.decode() if direct.text else base64.b64encode(direct.body).decode()
            answer["body"] = {"string" if direct.text else "bytes": body}
        out["directResponse"] = answer
    return out


def _header_rules_doc(rules: HeaderRules) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, operations in (("request", rules.request), ("response", rules.response)):
        if operations is not None:
            doc: dict[str, object] = {}
            put(doc, "set", dict(operations.set), {})
            put(doc, "add", dict(operations.add), {})
            put(doc, "remove", list(operations.remove), [])
            out[key] = doc
    return out


def _route_destination_doc(route: RouteDestination) -> dict[str, object]:
    out: dict[str, object] = {
        "destination": _destination_doc(route.destination),
        "weight": route.weight,
    }
    if route.headers is not None:
        out["headers"] = _header_rules_doc(route.headers)
    return out


def _match_doc(match: HTTPMatchRequest) -> dict[str, object]:
    out: dict[str, object] = {}
    put(out, "name", match.name)
    for key, value in (
        ("uri", match.uri),
        ("method", match.method),
        ("authority", match.authority),
    ):
        if value is not None:
            out[key] = _string_match_doc(value)
    put(out, "headers", {name: _string_match_doc(value) for name, value in match.headers}, {})
    put(
        out,
        "queryParams",
        {name: _string_match_doc(value) for name, value in match.query_params},
        {},
    )
    put(out, "sourceLabels", dict(match.source_labels), {})
    put(out, "ignoreUriCase", match.ignore_uri_case, False)
    return out


def _string_match_doc(match: StringMatch) -> dict[str, object]:
    out: dict[str, object] = {}
    put(out, "exact", match.exact)
    put(out, "prefix", match.prefix)
    put(out, "regex", match.regex)
    return out


def _destination_doc(destination: Destination) -> dict[str, object]:
    out: dict[str, object] = {"host": destination.host}
    put(out, "subset", destination.subset)
    if destination.port is not None:
        out["port"] = {"number": destination.port}
    return out


def _fault_doc(fault: Fault) -> dict[str, object]:
    out: dict[str, object] = {}
    if fault.delay is not None:
        delay: dict[str, object] = {}
        put(delay, "percentage", {"value": fault.delay.percentage}, {"value": 100.0})
        delay["fixedDelay"] = format_duration(fault.delay.fixed_delay)
        out["delay"] = delay
    if fault.abort is not None:
        abort: dict[str, object] = {}
        put(abort, "percentage", {"value": fault.abort.percentage}, {"value": 100.0})
        abort["httpStatus"] = fault.abort.http_status
        out["abort"] = abort
    return out
