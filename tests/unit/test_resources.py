"""Manifests to model values and back: shoal.resources.manifest."""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ManifestError, UserError
from shoal.resources.endpoint import Endpoint
from shoal.resources.fields import format_duration, parse_duration
from shoal.resources.manifest import load_files, parse_document, parse_text, to_document
from shoal.resources.model import (
    ConnectionPool,
    Destination,
    DestinationRule,
    Fault,
    FaultAbort,
    FaultDelay,
    HealthCheck,
    HTTPMatchRequest,
    HTTPRoute,
    Metadata,
    OutlierDetection,
    Retries,
    Rewrite,
    RouteDestination,
    Scale,
    Service,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from shoal.resources.service_spec import revision_spec, service_spec

PROPERTY = settings(max_examples=150, deadline=None, database=None)

FULL_VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
  labels: {team: books}
  annotations: {note: "anything at all"}
spec:
  hosts: [reviews, reviews.example.com]
  gateways: [mesh]
  http:
  - name: jason
    match:
    - name: by-user
      uri: {prefix: /api}
      method: {exact: GET}
      authority: {regex: "reviews(:\\\\d+)?"}
      headers:
        End-User: {exact: jason}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 75
    - destination: {host: reviews, subset: v3}
      weight: 25
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx, reset,503"}
    fault:
      delay: {percentage: {value: 10}, fixedDelay: 7s}
      abort: {percentage: {value: 0.5}, httpStatus: 418}
    rewrite: {uri: /v2, authority: reviews.internal}
    mirror: {host: reviews, subset: shadow}
  - route:
    - destination: {host: reviews, subset: v1}
"""

FULL_DESTINATION_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      interval: 5s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      minHealthPercent: 25.5
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 1
        idleTimeout: 1h
    failureThreshold: 3
    healthyThreshold: 2
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2, "example.com/tier": gold}
    trafficPolicy:
      loadBalancer: {simple: WEIGHTED}
"""

FULL_SERVICE = """
apiVersion: shoal/v1
kind: Service
metadata: {name: hello}
spec:
  command: [python, -m, hello, --port, "$PORT"]
  revision: v2
  workdir: /srv/hello
  env: {GREETING: hi, WORKERS: 4, RATIO: 0.5, DEBUG: true}
  labels: {tier: web}
  weight: 3
  scale: {min: 0, max: 4, target_concurrency: 20, idle_timeout: 5m}
  health:
    path: /healthz
    interval: 500ms
    timeout: 250ms
    healthy_threshold: 2
    unhealthy_threshold: 5
"""


def service_doc(**spec: object) -> dict[str, object]:
    """A Service document with ``spec`` (an app when none of app/command is given)."""
    if "app" not in spec and "command" not in spec:
        spec = {"app": "hello.main:app", **spec}
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": "hello"},
        "spec": spec,
    }


def virtual_service_doc(*http: object, **spec: object) -> dict[str, object]:
    """A VirtualService document with ``http`` rules (one plain route when none is given)."""
    rules = list(http) or [{"route": [{"destination": {"host": "reviews"}}]}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {"hosts": ["reviews"], "http": rules, **spec},
    }


def destination_rule_doc(**spec: object) -> dict[str, object]:
    """A DestinationRule document for host ``reviews`` with extra ``spec`` fields."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {"host": "reviews", **spec},
    }


def manifest_error(doc: object) -> ManifestError:
    """The ManifestError that parsing ``doc`` raises."""
    with pytest.raises(ManifestError) as caught:
        parse_document(doc)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("0.5s", 0.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("2.5s", 2.5),
        ("100us", 0.0001),
        ("100µs", 0.0001),
        ("250ns", 2.5e-7),
        ("1m30s", 90.0),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_reads_istio_forms_and_bare_seconds(value: object, seconds: float) -> None:
    """Istio duration strings and bare numbers are read as float seconds."""
    assert parse_duration(value, "spec.timeout") == seconds


@pytest.mark.parametrize(
    "value",
    [
        "-1s",
        -1,
        -0.5,
        "1",
        "1x",
        "s",
        "1.5 s",
        " 1s",
        "1s ",
        "",
        True,
        None,
        [],
        math.inf,
        math.nan,
    ],
)
def test_parse_duration_rejects_what_is_not_a_non_negative_duration(value: object) -> None:
    """Negative, unit-less strings, bools, non-finite and non-scalar values are errors."""
    with pytest.raises(ManifestError) as caught:
        parse_duration(value, "spec.timeout")
    assert caught.value.field == "spec.timeout"
    assert caught.value.value is value


@PROPERTY
@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_format_duration_reads_back_to_the_same_float(seconds: float) -> None:
    """format_duration's string parses back to exactly the seconds it was made from."""
    assert parse_duration(format_duration(seconds), "f") == seconds


def test_format_duration_prefers_whole_units() -> None:
    """Canonical durations use the largest unit that keeps a whole count."""
    assert [format_duration(s) for s in (0, 0.5, 1, 90, 120, 3600, 0.0001)] == [
        "0s",
        "500ms",
        "1s",
        "90s",
        "2m",
        "1h",
        "100us",
    ]


# ---------------------------------------------------------------------------------------------
# Full valid examples


def test_full_virtual_service_parses_to_the_expected_values() -> None:
    """Every supported VirtualService field lands in the model, converted and normalised."""
    [service] = parse_text(FULL_VIRTUAL_SERVICE)
    assert service == VirtualService(
        name="reviews",
        hosts=("reviews", "reviews.example.com"),
        gateways=("mesh",),
        http=(
            HTTPRoute(
                name="jason",
                match=(
                    HTTPMatchRequest(
                        name="by-user",
                        uri=StringMatch(prefix="/api"),
                        method=StringMatch(exact="GET"),
                        authority=StringMatch(regex=r"reviews(:\d+)?"),
                        headers=(("end-user", StringMatch(exact="jason")),),
                        ignore_uri_case=True,
                    ),
                ),
                route=(
                    RouteDestination(
                        destination=Destination(host="reviews", subset="v2", port=9080), weight=75
                    ),
                    RouteDestination(
                        destination=Destination(host="reviews", subset="v3"), weight=25
                    ),
                ),
                timeout=1.5,
                retries=Retries(attempts=3, per_try_timeout=0.5, retry_on=("5xx", "reset", "503")),
                fault=Fault(
                    delay=FaultDelay(percentage=10.0, fixed_delay=7.0),
                    abort=FaultAbort(percentage=0.5, http_status=418),
                ),
                rewrite=Rewrite(uri="/v2", authority="reviews.internal"),
                mirror=Destination(host="reviews", subset="shadow"),
            ),
            HTTPRoute(
                route=(RouteDestination(destination=Destination(host="reviews", subset="v1")),)
            ),
        ),
        metadata=Metadata(labels=(("team", "books"),), annotations=(("note", "anything at all"),)),
    )


def test_full_destination_rule_parses_to_the_expected_values() -> None:
    """Every supported DestinationRule field lands in the model; LEAST_CONN is LEAST_REQUEST."""
    [rule] = parse_text(FULL_DESTINATION_RULE)
    assert rule == DestinationRule(
        name="reviews",
        host="reviews",
        subsets=(
            Subset(name="v1", labels=(("version", "v1"),)),
            Subset(
                name="v2",
                labels=(("example.com/tier", "gold"), ("version", "v2")),
                traffic_policy=TrafficPolicy(load_balancer="WEIGHTED"),
            ),
        ),
        traffic_policy=TrafficPolicy(
            load_balancer="LEAST_REQUEST",
            outlier_detection=OutlierDetection(
                consecutive_5xx_errors=3,
                consecutive_gateway_errors=2,
                interval=5.0,
                base_ejection_time=60.0,
                max_ejection_percent=50.0,
                min_health_percent=25.5,
            ),
            connection_pool=ConnectionPool(
                max_connections=100,
                connect_timeout=0.25,
                http1_max_pending_requests=10,
                http2_max_requests=1000,
                max_requests_per_connection=1,
                idle_timeout=3600.0,
            ),
            failure_threshold=3,
            healthy_threshold=2,
        ),
    )


def test_full_service_parses_to_the_expected_values() -> None:
    """Every Service field lands in the model; env scalars become strings, maps are sorted."""
    [service] = parse_text(FULL_SERVICE)
    assert service == Service(
        name="hello",
        revision="v2",
        command=("python", "-m", "hello", "--port", "$PORT"),
        workdir="/srv/hello",
        env=(("DEBUG", "true"), ("GREETING", "hi"), ("RATIO", "0.5"), ("WORKERS", "4")),
        labels=(("tier", "web"),),
        weight=3,
        scale=Scale(min=0, max=4, target_concurrency=20, idle_timeout=300.0),
        health=HealthCheck(
            path="/healthz",
            interval=0.5,
            timeout=0.25,
            healthy_threshold=2,
            unhealthy_threshold=5,
        ),
    )


# ---------------------------------------------------------------------------------------------
# Defaults


def test_minimal_service_takes_the_model_defaults() -> None:
    """A Service with only an app gets default weight, scale, health and a hashed revision."""
    service = parse_document(service_doc())
    assert isinstance(service, Service)
    assert service.app == "hello.main:app"
    assert service.command is None
    assert (service.workdir, service.env, service.labels, service.weight) == (None, (), (), 1)
    assert service.scale == Scale()
    assert service.health == HealthCheck()
    assert re.fullmatch(r"[0-9a-f]{10}", service.revision)


def test_a_grpc_health_check_is_asked_for_and_kept() -> None:
    """``health.grpc: true`` (the standard gRPC health check) round-trips; with a ``path`` too
    it is refused, naming the field."""
    service = parse_document(service_doc(health={"grpc": True}))
    assert isinstance(service, Service)
    assert service.health == HealthCheck(grpc=True)
    assert to_document(service)["spec"]["health"] == {"grpc": True}  # type: ignore[index]
    with pytest.raises(ManifestError) as caught:
        parse_document(service_doc(health={"grpc": True, "path": "/healthz"}))
    assert caught.value.field == "spec.health" and "not both" in str(caught.value)


def test_minimal_virtual_service_and_destination_rule_take_the_defaults() -> None:
    """Omitted Istio fields take Istio's defaults: no gateways, ROUND_ROBIN, weight 100."""
    service = parse_document(virtual_service_doc())
    assert service == VirtualService(
        name="reviews",
        hosts=("reviews",),
        http=(HTTPRoute(route=(RouteDestination(destination=Destination(host="reviews")),)),),
    )
    rule = parse_document(destination_rule_doc())
    assert rule == DestinationRule(name="reviews", host="reviews")
    assert rule.traffic_policy.load_balancer is None


def test_empty_istio_sub_objects_take_istio_defaults() -> None:
    """retries, outlierDetection and a fault without percentage get the documented defaults."""
    service = parse_document(
        virtual_service_doc(
            {
                "route": [{"destination": {"host": "reviews"}}],
                "retries": {},
                "fault": {"abort": {"httpStatus": 503}},
            }
        )
    )
    assert isinstance(service, VirtualService)
    assert service.http[0].retries == Retries()
    assert service.http[0].fault == Fault(abort=FaultAbort(percentage=100.0, http_status=503))
    rule = parse_document(destination_rule_doc(trafficPolicy={"outlierDetection": {}}))
    assert isinstance(rule, DestinationRule)
    assert rule.traffic_policy.outlier_detection == OutlierDetection()


def test_null_values_count_as_absent() -> None:
    """``key:`` with no value (YAML null) is the same as leaving the key out."""
    [service] = parse_text(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: hello}\n"
        "spec:\n  app: hello.main:app\n  weight:\n  env:\n"
    )
    assert service == parse_document(service_doc())


# ---------------------------------------------------------------------------------------------
# Routes, matches and policies


def test_a_lone_destination_takes_all_traffic() -> None:
    """One destination has weight 100 whether its weight is omitted or not (Istio's rule)."""
    for weight in ({}, {"weight": 40}):
        service = parse_document(
            virtual_service_doc({"route": [{"destination": {"host": "reviews"}, **weight}]})
        )
        assert isinstance(service, VirtualService)
        assert service.http[0].route[0].weight == 100


def test_several_destinations_default_to_zero_and_must_sum_to_100() -> None:
    """An omitted weight among several is 0; weights not summing to 100 name the route and sum."""
    service = parse_document(
        virtual_service_doc(
            {
                "route": [
                    {"destination": {"host": "a"}, "weight": 100},
                    {"destination": {"host": "b"}},
                ]
            }
        )
    )
    assert isinstance(service, VirtualService)
    assert [route.weight for route in service.http[0].route] == [100, 0]
    error = manifest_error(
        virtual_service_doc(
            {
                "route": [
                    {"destination": {"host": "a"}, "weight": 60},
                    {"destination": {"host": "b"}},
                ]
            }
        )
    )
    assert (error.field, error.value) == ("spec.http[0].route", 60)
    assert "sum to 100" in str(error)


def test_empty_route_is_allowed_only_with_an_abort_fault() -> None:
    """A rule without destinations is an error unless fault.abort answers every request."""
    abort = {"abort": {"httpStatus": 503}}
    service = parse_document(virtual_service_doc({"fault": abort}))
    assert isinstance(service, VirtualService)
    assert service.http[0].route == ()
    rules: list[dict[str, object]] = [{}, {"route": []}, {"fault": {"delay": {"fixedDelay": "1s"}}}]
    for rule in rules:
        assert manifest_error(virtual_service_doc(rule)).field == "spec.http[0].route"


@pytest.mark.parametrize(
    "match",
    [{}, {"exact": "a", "prefix": "b"}, {"exact": None}],
)
def test_string_match_needs_exactly_one_kind(match: dict[str, object]) -> None:
    """A StringMatch with none or several of exact/prefix/regex is an error naming it."""
    error = manifest_error(
        virtual_service_doc({"match": [{"uri": match}], "route": [{"destination": {"host": "r"}}]})
    )
    assert error.field == "spec.http[0].match[0].uri"


def test_invalid_regex_is_an_error_naming_the_regex() -> None:
    """A regex Python's re cannot compile is reported with its path and text."""
    error = manifest_error(
        virtual_service_doc(
            {
                "match": [{"headers": {"x-id": {"regex": "(["}}}],
                "route": [{"destination": {"host": "r"}}],
            }
        )
    )
    assert (error.field, error.value) == ("spec.http[0].match[0].headers.x-id.regex", "([")
    assert "invalid regular expression" in error.reason


def test_header_names_are_lower_cased_and_may_not_repeat() -> None:
    """Header matches are stored lower-case; two spellings of one header are an error."""
    route = [{"destination": {"host": "r"}}]
    service = parse_document(
        virtual_service_doc(
            {"match": [{"headers": {"X-B": {"exact": "1"}, "x-a": {"prefix": ""}}}], "route": route}
        )
    )
    assert isinstance(service, VirtualService)
    assert service.http[0].match[0].headers == (
        ("x-a", StringMatch(prefix="")),
        ("x-b", StringMatch(exact="1")),
    )
    error = manifest_error(
        virtual_service_doc(
            {"match": [{"headers": {"X-A": {"exact": "1"}, "x-a": {"exact": "2"}}}], "route": route}
        )
    )
    assert error.field == "spec.http[0].match[0].headers.x-a"


def test_retry_on_is_split_and_checked() -> None:
    """retryOn is a comma-separated list of Envoy conditions or status codes."""
    route = [{"destination": {"host": "r"}}]
    service = parse_document(
        virtual_service_doc({"route": route, "retries": {"retryOn": "gateway-error,504"}})
    )
    assert isinstance(service, VirtualService)
    assert service.http[0].retries == Retries(retry_on=("gateway-error", "504"))
    error = manifest_error(
        virtual_service_doc({"route": route, "retries": {"retryOn": "5xx,sometimes"}})
    )
    assert (error.field, error.value) == ("spec.http[0].retries.retryOn", "5xx,sometimes")


def test_deprecated_consecutive_errors_means_consecutive_5xx_errors() -> None:
    """Istio's consecutiveErrors sets consecutive_5xx_errors; giving both names is an error."""
    rule = parse_document(
        destination_rule_doc(trafficPolicy={"outlierDetection": {"consecutiveErrors": 7}})
    )
    assert isinstance(rule, DestinationRule)
    assert rule.traffic_policy.outlier_detection == OutlierDetection(consecutive_5xx_errors=7)
    error = manifest_error(
        destination_rule_doc(
            trafficPolicy={"outlierDetection": {"consecutiveErrors": 7, "consecutive5xxErrors": 3}}
        )
    )
    assert error.field == "spec.trafficPolicy.outlierDetection.consecutiveErrors"


def test_subset_names_are_unique_within_a_rule() -> None:
    """A second subset with the same name is an error naming its index."""
    error = manifest_error(destination_rule_doc(subsets=[{"name": "v1"}, {"name": "v1"}]))
    assert (error.field, error.value) == ("spec.subsets[1].name", "v1")


# ---------------------------------------------------------------------------------------------
# Errors: file, document, field and value


def test_error_message_names_file_document_field_and_value() -> None:
    """The rendered error reads: file, document index, field path, reason, bad value."""
    text = FULL_SERVICE + "---\n" + virtual_service_yaml(weight="abc")
    with pytest.raises(ManifestError) as caught:
        parse_text(text, file="hello.yaml")
    assert str(caught.value) == (
        "hello.yaml, document 1, field spec.http[0].route[0].weight: "
        "must be an integer from 0 to 100 (got 'abc')"
    )
    assert (caught.value.file, caught.value.document) == ("hello.yaml", 1)


def virtual_service_yaml(*, weight: str) -> str:
    """A one-route VirtualService manifest whose weight is the YAML text ``weight``."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
        "spec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n"
        f"      weight: {weight}\n"
    )


@pytest.mark.parametrize(
    ("doc", "field", "value"),
    [
        ({**service_doc(), "kind": "Deployment"}, "kind", "Deployment"),
        ({**service_doc(), "apiVersion": "apps/v1"}, "apiVersion", "apps/v1"),
        ({**virtual_service_doc(), "apiVersion": "shoal/v1"}, "apiVersion", "shoal/v1"),
        ({**service_doc(), "metadata": {"name": "Hello_World"}}, "metadata.name", "Hello_World"),
        ({**service_doc(), "metadata": {}}, "metadata.name", None),
        ({k: v for k, v in service_doc().items() if k != "spec"}, "spec", None),
        (service_doc(weight="2"), "spec.weight", "2"),
        (service_doc(weight=True), "spec.weight", True),
        (service_doc(weight=0), "spec.weight", 0),
        (service_doc(weight=1.0), "spec.weight", 1.0),
        (service_doc(app="hello"), "spec.app", "hello"),
        (service_doc(app="a:b", command=["x"]), "spec", None),
        (service_doc(command=[]), "spec.command", []),
        (service_doc(command=["x", 1]), "spec.command[1]", 1),
        (service_doc(revision="V1"), "spec.revision", "V1"),
        (service_doc(env={"1X": "a"}), "spec.env.1X", "1X"),
        (service_doc(env={"X": None}), "spec.env.X", None),
        (service_doc(env={"X": [1]}), "spec.env.X", [1]),
        (service_doc(labels={"version": "v9"}), "spec.labels.version", "version"),
        (service_doc(labels={"app": "x"}), "spec.labels.app", "app"),
        (service_doc(labels={"tier": 3}), "spec.labels.tier", 3),
        (service_doc(scale={"min": 5, "max": 2}), "spec.scale.max", 2),
        (service_doc(scale={"min": -1}), "spec.scale.min", -1),
        (service_doc(scale={"idle_timeout": "soon"}), "spec.scale.idle_timeout", "soon"),
        (service_doc(health={"path": "healthz"}), "spec.health.path", "healthz"),
        (service_doc(health={"interval": "0s"}), "spec.health.interval", "0s"),
        (service_doc(health={"unhealthy_threshold": 0}), "spec.health.unhealthy_threshold", 0),
        (service_doc(scale=[1]), "spec.scale", [1]),
        (virtual_service_doc(hosts=[]), "spec.hosts", []),
        (virtual_service_doc(hosts="reviews"), "spec.hosts", "reviews"),
        (
            virtual_service_doc({"route": [{"destination": {"host": "r"}, "weight": 101}]}),
            "spec.http[0].route[0].weight",
            101,
        ),
        (
            virtual_service_doc({"route": [{"destination": {"host": "r"}}], "timeout": "1 s"}),
            "spec.http[0].timeout",
            "1 s",
        ),
        (
            virtual_service_doc({"route": [{"destination": {"host": "r", "port": {"number": 0}}}]}),
            "spec.http[0].route[0].destination.port.number",
            0,
        ),
        (
            virtual_service_doc(
                {"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 150}}}}
            ),
            "spec.http[0].fault.abort.percentage.value",
            150,
        ),
        (
            virtual_service_doc({"route": [{"destination": {}}]}),
            "spec.http[0].route[0].destination.host",
            None,
        ),
        (
            destination_rule_doc(trafficPolicy={"loadBalancer": {"simple": "PASSTHROUGH"}}),
            "spec.trafficPolicy.loadBalancer.simple",
            "PASSTHROUGH",
        ),
        (
            destination_rule_doc(trafficPolicy={"connectionPool": {"tcp": {"maxConnections": 0}}}),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            0,
        ),
        (destination_rule_doc(subsets=[{"name": "V 1"}]), "spec.subsets[0].name", "V 1"),
        (destination_rule_doc(host=None), "spec.host", None),
    ],
)
def test_each_class_of_error_names_the_field_and_value(
    doc: dict[str, object], field: str, value: object
) -> None:
    """Wrong types, ranges, names and combinations raise with the exact field path and value."""
    text = yaml.safe_dump_all([service_doc(), doc])
    with pytest.raises(ManifestError) as caught:
        parse_text(text, file="bad.yaml")
    error = caught.value
    assert (error.file, error.document, error.field, error.value) == ("bad.yaml", 1, field, value)
    assert str(error).startswith(f"bad.yaml, document 1, field {field}: ")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({**service_doc(), "status": {"phase": "Ready"}}, "status.phase"),
        ({**virtual_service_doc(), "status": {}}, "status"),
        ({**service_doc(), "metadata": {"name": "hello", "uid": "1"}}, "metadata.uid"),
        (service_doc(replicas=3), "spec.replicas"),
        (service_doc(scale={"targetConcurrency": 5}), "spec.scale.targetConcurrency"),
        (virtual_service_doc(tcp=[]), "spec.tcp"),
        (virtual_service_doc({"delegate": {}}), "spec.http[0].delegate"),
        (
            virtual_service_doc(
                {"match": [{"sourceNamespace": "a"}], "route": [{"destination": {"host": "r"}}]}
            ),
            "spec.http[0].match[0].sourceNamespace",
        ),
        (
            virtual_service_doc(
                {"route": [{"destination": {"host": "r", "port": {"number": 1, "name": "h"}}}]}
            ),
            "spec.http[0].route[0].destination.port.name",
        ),
        (
            virtual_service_doc({"fault": {"abort": {"httpStatus": 503, "percent": 5}}}),
            "spec.http[0].fault.abort.percent",
        ),
        (
            destination_rule_doc(trafficPolicy={"loadBalancer": {"localityLbSetting": {}}}),
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
        ),
        (
            destination_rule_doc(
                subsets=[
                    {
                        "name": "v1",
                        "trafficPolicy": {"connectionPool": {"http": {"maxRetries": 3}}},
                    }
                ]
            ),
            "spec.subsets[0].trafficPolicy.connectionPool.http.maxRetries",
        ),
    ],
)
def test_unknown_fields_are_errors_at_every_depth(doc: dict[str, object], field: str) -> None:
    """A field Shoal does not implement is reported with its full path, never ignored."""
    error = manifest_error(doc)
    assert error.field == field
    assert error.reason.startswith("field not supported by Shoal")
    assert error.value is not None  # the value written is named too


def test_metadata_labels_and_annotations_are_kept_and_written_back() -> None:
    """Labels and annotations on any kind are kept (``get`` shows them); the one namespace
    Shoal serves may be named; any other is refused, as are hosts in another namespace."""
    doc = destination_rule_doc()
    doc["metadata"] = {
        "name": "reviews",
        "namespace": "default",
        "labels": {"team": "books"},
        "annotations": {"owner": "Ana <ana@example.org>"},
    }
    rule = parse_document(doc)
    assert rule.metadata.labels == (("team", "books"),)
    assert rule.metadata.annotations == (("owner", "Ana <ana@example.org>"),)
    written = to_document(rule)
    assert written["metadata"] == {
        "name": "reviews",
        "labels": {"team": "books"},
        "annotations": {"owner": "Ana <ana@example.org>"},
    }
    assert parse_document(written) == rule
    doc["metadata"] = {"name": "reviews", "namespace": "bookinfo"}
    error = manifest_error(doc)
    assert (error.field, error.value) == ("metadata.namespace", "bookinfo")
    assert "one namespace, default" in error.reason
    error = manifest_error(destination_rule_doc(host="reviews.bookinfo.svc.cluster.local"))
    assert (error.field, error.value) == ("spec.host", "reviews.bookinfo.svc.cluster.local")
    assert "write reviews or reviews.default.svc.cluster.local" in error.reason


def test_an_unknown_field_says_what_to_write_instead() -> None:
    """A near miss gets the field meant; anything else the fields allowed at that place."""
    typo = manifest_error(destination_rule_doc(trafficPolicy={"failureTreshold": 3}))
    assert typo.reason == "field not supported by Shoal: did you mean failureThreshold?"
    assert "(got 3)" in str(typo)
    other = manifest_error(destination_rule_doc(trafficPolicy={"tcpKeepalive": {}}))
    assert "fields here: connectionPool, failureThreshold" in other.reason


def test_yaml_syntax_error_names_file_document_and_line() -> None:
    """Broken YAML becomes a ManifestError with the file, document index and line."""
    with pytest.raises(ManifestError) as caught:
        parse_text(FULL_SERVICE + "---\nkind: [Service\n", file="broken.yaml")
    assert (caught.value.file, caught.value.document) == ("broken.yaml", 1)
    assert re.search(r"invalid YAML: .*\(line \d+, column \d+\)", str(caught.value))


def test_repeated_yaml_key_is_an_error_not_a_silent_override() -> None:
    """A key written twice in one mapping is refused rather than keeping the last value."""
    with pytest.raises(ManifestError) as caught:
        parse_text("kind: Service\nkind: VirtualService\n", file="twice.yaml")
    assert "duplicate key 'kind'" in str(caught.value)
    assert "line 2" in str(caught.value)


@pytest.mark.parametrize("doc", [[1, 2], "Service", 3])
def test_a_document_that_is_not_a_mapping_is_an_error(doc: object) -> None:
    """A list or scalar document is rejected with the value it held."""
    assert manifest_error(doc).value == doc


def test_empty_documents_are_skipped_but_still_counted() -> None:
    """Empty documents yield nothing, and document indexes still count them."""
    assert parse_text("") == []
    assert parse_text("---\n# nothing\n---\n") == []
    with pytest.raises(ManifestError) as caught:
        parse_text("---\n---\n" + virtual_service_yaml(weight="-1"), file="f.yaml")
    assert caught.value.document == 1


# ---------------------------------------------------------------------------------------------
# load_files


def write(directory: Any, name: str, text: str) -> str:
    """Write ``text`` to ``directory/name`` and return the path as a string."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_files_reads_all_files_in_order(tmp_path: Any) -> None:
    """Resources come back in file order, then document order."""
    first = write(tmp_path, "a.yaml", FULL_SERVICE + "---\n" + FULL_VIRTUAL_SERVICE)
    second = write(tmp_path, "b.yaml", FULL_DESTINATION_RULE)
    kinds = [resource.kind for resource in load_files([first, second])]
    assert kinds == ["Service", "VirtualService", "DestinationRule"]


def test_a_directory_is_its_manifest_files_by_name(tmp_path: Any) -> None:
    """``-f DIR`` (as kubectl's): its .yaml/.yml/.json files by name, nothing else; a directory
    without one is a UserError naming it."""
    write(tmp_path, "b.yml", FULL_DESTINATION_RULE)
    write(tmp_path, "a.yaml", FULL_SERVICE + "---\n" + FULL_VIRTUAL_SERVICE)
    write(tmp_path, "notes.txt", "not a manifest")
    (tmp_path / "sub.yaml").mkdir()
    kinds = [resource.kind for resource in load_files([str(tmp_path)])]
    assert kinds == ["Service", "VirtualService", "DestinationRule"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no manifest in .*empty"):
        load_files([str(empty)])


def test_load_files_with_one_bad_document_raises_and_names_it(tmp_path: Any) -> None:
    """One invalid document among valid ones fails the whole load, naming file and document."""
    good = write(tmp_path, "good.yaml", FULL_DESTINATION_RULE)
    bad = write(tmp_path, "bad.yaml", FULL_SERVICE + "---\n" + virtual_service_yaml(weight="true"))
    with pytest.raises(ManifestError) as caught:
        load_files([good, bad])
    error = caught.value
    assert (error.file, error.document, error.field, error.value) == (
        bad,
        1,
        "spec.http[0].route[0].weight",
        True,
    )


def test_load_files_lists_every_error_one_per_line(tmp_path: Any) -> None:
    """Several invalid documents are reported together, each on its own line."""
    first = write(tmp_path, "a.yaml", virtual_service_yaml(weight="x"))
    second = write(tmp_path, "b.yaml", FULL_SERVICE + "---\nkind: [\n")
    with pytest.raises(ManifestError) as caught:
        load_files([first, second])
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{first}, document 0, field spec.http[0].route[0].weight: ")
    assert lines[1].startswith(f"{second}, document 1: invalid YAML")


def test_load_files_rejects_the_same_kind_and_key_twice(tmp_path: Any) -> None:
    """Two documents defining one (kind, key) in a load are an error naming the second."""
    first = write(tmp_path, "a.yaml", FULL_DESTINATION_RULE)
    second = write(tmp_path, "b.yaml", FULL_SERVICE + "---\n" + FULL_DESTINATION_RULE)
    with pytest.raises(ManifestError) as caught:
        load_files([first, second])
    assert (caught.value.file, caught.value.document) == (second, 1)
    assert f"already defined in {first}, document 0" in str(caught.value)


def test_load_files_accepts_two_revisions_of_one_service(tmp_path: Any) -> None:
    """A Service's key is name/revision, so two revisions of one name may be loaded together."""
    text = FULL_SERVICE + "---\n" + FULL_SERVICE.replace("revision: v2", "revision: v3")
    resources = load_files([write(tmp_path, "a.yaml", text)])
    assert [resource.key for resource in resources] == ["hello/v2", "hello/v3"]


def test_load_files_unreadable_file_is_a_user_error_naming_it(tmp_path: Any) -> None:
    """A missing file is a UserError (not a manifest error) that names the path."""
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(UserError) as caught:
        load_files([missing])
    assert not isinstance(caught.value, ManifestError)
    assert missing in str(caught.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        load_files([str(binary)])


def test_load_files_reads_stdin_for_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path ``-`` reads manifests from standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(FULL_DESTINATION_RULE))
    [rule] = load_files(["-"])
    assert rule.kind == "DestinationRule"


def test_relative_workdir_is_resolved_against_the_file_directory(tmp_path: Any) -> None:
    """A relative workdir is made absolute from its file's directory; an absolute one is kept."""
    (tmp_path / "deploy").mkdir()
    relative = FULL_SERVICE.replace("workdir: /srv/hello", "workdir: ../app/./src")
    path = write(tmp_path / "deploy", "svc.yaml", relative)
    [service] = load_files([path])
    assert isinstance(service, Service)
    assert service.workdir == os.path.normpath(str(tmp_path / "app" / "src"))
    [kept] = load_files([write(tmp_path, "abs.yaml", FULL_SERVICE)])
    assert isinstance(kept, Service)
    assert kept.workdir == "/srv/hello"


def test_relative_workdir_without_base_dir_stays_relative() -> None:
    """Without a base directory a relative workdir is left as written."""
    service = parse_document(service_doc(workdir="app"))
    assert isinstance(service, Service)
    assert service.workdir == "app"
    based = parse_document(service_doc(workdir="app"), base_dir="/srv")
    assert isinstance(based, Service)
    assert based.workdir == "/srv/app"


# ---------------------------------------------------------------------------------------------
# Revisions


def test_revision_hash_is_deterministic_and_ignores_spelling() -> None:
    """Equal specs get one revision however YAML spells them: order, defaults, 8080 or "8080"."""
    one = parse_document(service_doc(env={"PORT2": 8080, "A": "x"}))
    two = parse_document(
        service_doc(weight=1, env={"A": "x", "PORT2": "8080"}, scale={"idle_timeout": "1m"})
    )
    assert isinstance(one, Service)
    assert isinstance(two, Service)
    assert one.revision == two.revision
    assert re.fullmatch(r"[0-9a-f]{10}", one.revision)


def test_revision_hash_changes_when_the_spec_changes() -> None:
    """Any change to what runs gives a new revision."""
    base = parse_document(service_doc())
    changed = [
        parse_document(service_doc(app="hello.main:other")),
        parse_document(service_doc(env={"A": "1"})),
        parse_document(service_doc(weight=2)),
    ]
    revisions = {base.key} | {resource.key for resource in changed}
    assert len(revisions) == 4


def test_scaling_is_not_a_new_revision() -> None:
    """Scale bounds change in place (``shoal scale``): the same revision."""
    base = parse_document(service_doc())
    assert parse_document(service_doc(scale={"max": 3})).key == base.key


def test_node_selector_is_not_a_new_revision() -> None:
    """A node selector says where instances run, not what runs: the same revision, and a
    revision hashed before node_selector existed keeps its name."""
    base = parse_document(service_doc())
    placed = parse_document(service_doc(node_selector={"zone": "eu-1"}))
    assert isinstance(placed, Service)
    assert placed.key == base.key
    assert placed.node_selector == (("zone", "eu-1"),)
    assert placed != base
    assert "node_selector" not in revision_spec(placed)


def test_node_selector_parses_sorted_and_round_trips() -> None:
    """node_selector reads as label pairs sorted by key and is written back unchanged."""
    doc = service_doc(node_selector={"zone": "eu-1", "example.com/disk": "ssd"})
    service = parse_document(doc)
    assert isinstance(service, Service)
    assert service.node_selector == (("example.com/disk", "ssd"), ("zone", "eu-1"))
    canonical = to_document(service)
    assert canonical["spec"]["node_selector"] == {  # type: ignore[index]
        "example.com/disk": "ssd",
        "zone": "eu-1",
    }
    assert parse_document(json.loads(json.dumps(canonical))) == service
    assert "node_selector" not in to_document(parse_document(service_doc()))["spec"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("selector", "field", "value"),
    [
        (["zone=eu"], "spec.node_selector", ["zone=eu"]),
        ({"bad key": "x"}, "spec.node_selector['bad key']", "bad key"),
        ({"zone": 1}, "spec.node_selector.zone", 1),
        ({"zone": "-eu"}, "spec.node_selector.zone", "-eu"),
        ({"zone": "x" * 64}, "spec.node_selector.zone", "x" * 64),
    ],
)
def test_bad_node_selector_names_the_field_and_value(
    selector: object, field: str, value: object
) -> None:
    """A node_selector that is not a map of label names to label values is an error naming
    the file, document, field and value."""
    text = yaml.safe_dump_all([service_doc(), service_doc(node_selector=selector)])
    with pytest.raises(ManifestError) as caught:
        parse_text(text, file="bad.yaml")
    error = caught.value
    assert (error.file, error.document, error.field, error.value) == ("bad.yaml", 1, field, value)


def test_node_selector_is_spelled_in_snake_case() -> None:
    """Kubernetes' nodeSelector spelling is an unknown field, like every camelCase Shoal field."""
    error = manifest_error(service_doc(nodeSelector={"zone": "eu"}))
    assert error.field == "spec.nodeSelector"
    assert error.reason.startswith("field not supported by Shoal")


def test_explicit_revision_is_kept() -> None:
    """A revision given in the spec is used as is."""
    service = parse_document(service_doc(revision="blue-1"))
    assert isinstance(service, Service)
    assert service.revision == "blue-1"
    assert service.key == "hello/blue-1"


# ---------------------------------------------------------------------------------------------
# to_document and round trips


def test_to_document_writes_canonical_istio_field_names() -> None:
    """The canonical document uses Istio camelCase, duration strings and explicit weights."""
    [rule] = parse_text(FULL_DESTINATION_RULE)
    doc = to_document(rule)
    assert doc["apiVersion"] == "networking.istio.io/v1"
    assert doc["metadata"] == {"name": "reviews"}
    spec = doc["spec"]
    assert isinstance(spec, dict)
    assert spec["trafficPolicy"]["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert spec["trafficPolicy"]["connectionPool"]["tcp"] == {
        "maxConnections": 100,
        "connectTimeout": "250ms",
    }
    [service] = parse_text(FULL_VIRTUAL_SERVICE)
    http = to_document(service)["spec"]["http"]  # type: ignore[index]
    assert http[1]["route"] == [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 100}]


@pytest.mark.parametrize("text", [FULL_SERVICE, FULL_VIRTUAL_SERVICE, FULL_DESTINATION_RULE])
def test_full_examples_survive_json_and_yaml(text: str) -> None:
    """to_document output stored as JSON or shown as YAML parses back to the same resource."""
    [resource] = parse_text(text)
    doc = to_document(resource)
    assert parse_document(json.loads(json.dumps(doc))) == resource
    assert parse_text(yaml.safe_dump(doc)) == [resource]


names = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
durations = st.one_of(
    st.integers(1, 10**6).map(lambda n: f"{n}ms"),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    st.integers(1, 10**4),
    st.sampled_from(["1s", "1m", "1h", "100us", "1m30s", "2.5s", "0.75s"]),
)
percents = st.one_of(st.integers(0, 100), st.floats(min_value=0, max_value=100))
string_matches = st.one_of(
    st.builds(lambda value: {"exact": value}, st.text(max_size=8)),
    st.builds(lambda value: {"prefix": value}, st.text(max_size=8)),
    st.builds(lambda value: {"regex": value}, st.sampled_from(["a.*", "^/v[0-9]+$", "x|y", ""])),
)
header_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
label_maps = st.dictionaries(
    st.from_regex(
        r"([a-z]{1,5}\.[a-z]{1,3}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?", fullmatch=True
    ),
    st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?)?", fullmatch=True),
    max_size=3,
)
ports = st.builds(lambda number: {"number": number}, st.integers(1, 65535))
destinations = st.fixed_dictionaries({"host": names}, optional={"subset": names, "port": ports})


@st.composite
def routes(draw: st.DrawFn) -> list[dict[str, object]]:
    """One destination (any or no weight) or several whose weights sum to 100."""
    count = draw(st.integers(1, 4))
    if count == 1:
        entry: dict[str, object] = {"destination": draw(destinations)}
        if draw(st.booleans()):
            entry["weight"] = draw(st.integers(0, 100))
        return [entry]
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    result = []
    for weight in weights:
        entry = {"destination": draw(destinations)}
        if weight or draw(st.booleans()):
            entry["weight"] = weight
        result.append(entry)
    return result


matches = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "uri": string_matches,
        "method": string_matches,
        "authority": string_matches,
        "headers": st.dictionaries(header_names.map(str.title), string_matches, max_size=3),
        "ignoreUriCase": st.booleans(),
    },
)
retries = st.fixed_dictionaries(
    {},
    optional={
        "attempts": st.integers(0, 10),
        "perTryTimeout": durations,
        "retryOn": st.lists(
            st.sampled_from(["5xx", "reset", "connect-failure", "503", "unavailable"]),
            min_size=1,
            max_size=3,
        ).map(",".join),
    },
)
faults = st.fixed_dictionaries(
    {},
    optional={
        "delay": st.fixed_dictionaries(
            {"fixedDelay": st.one_of(durations, st.just("0s"))},
            optional={"percentage": st.builds(lambda value: {"value": value}, percents)},
        ),
        "abort": st.fixed_dictionaries(
            {"httpStatus": st.integers(200, 599)},
            optional={"percentage": st.builds(lambda value: {"value": value}, percents)},
        ),
    },
).filter(bool)
rewrites = st.fixed_dictionaries(
    {}, optional={"uri": st.sampled_from(["/", "/v2"]), "authority": names}
).filter(bool)
http_rules = st.fixed_dictionaries(
    {"route": routes()},
    optional={
        "name": names,
        "match": st.lists(matches, max_size=2),
        "timeout": durations,
        "retries": retries,
        "fault": faults,
        "rewrite": rewrites,
        "mirror": destinations,
    },
)
virtual_services = st.builds(
    lambda name, hosts, gateways, http: {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": hosts, "gateways": gateways, "http": http},
    },
    names,
    st.lists(names, min_size=1, max_size=3),
    st.lists(names, max_size=2),
    st.lists(http_rules, min_size=1, max_size=3),
)

traffic_policies = st.fixed_dictionaries(
    {},
    optional={
        "loadBalancer": st.builds(
            lambda simple: {"simple": simple},
            st.sampled_from(["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "LEAST_CONN", "WEIGHTED"]),
        ),
        "outlierDetection": st.fixed_dictionaries(
            {},
            optional={
                "consecutive5xxErrors": st.integers(0, 20),
                "consecutiveGatewayErrors": st.integers(0, 20),
                "interval": durations,
                "baseEjectionTime": durations,
                "maxEjectionPercent": percents,
                "minHealthPercent": percents,
            },
        ),
        "connectionPool": st.fixed_dictionaries(
            {},
            optional={
                "tcp": st.fixed_dictionaries(
                    {},
                    optional={"maxConnections": st.integers(1, 10**6), "connectTimeout": durations},
                ),
                "http": st.fixed_dictionaries(
                    {},
                    optional={
                        "http1MaxPendingRequests": st.integers(1, 10**6),
                        "http2MaxRequests": st.integers(1, 10**6),
                        "maxRequestsPerConnection": st.integers(1, 10**6),
                        "idleTimeout": durations,
                    },
                ),
            },
        ),
        "failureThreshold": st.integers(1, 10),
        "healthyThreshold": st.integers(1, 10),
    },
)
subsets = st.fixed_dictionaries(
    {"name": names}, optional={"labels": label_maps, "trafficPolicy": traffic_policies}
)
destination_rules = st.builds(
    lambda name, host, subsets, policy: {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {"host": host, "subsets": subsets, "trafficPolicy": policy},
    },
    names,
    names,
    st.lists(subsets, max_size=3, unique_by=lambda subset: subset["name"]),
    traffic_policies,
)


@st.composite
def scales(draw: st.DrawFn) -> dict[str, object]:
    """A valid scale block: max (given or the default 10) is never below min."""
    scale: dict[str, object] = {}
    minimum = draw(st.integers(0, 20))
    maximum = 10
    if draw(st.booleans()):
        maximum = draw(st.integers(max(1, minimum), 50))
        scale["max"] = maximum
    if minimum <= maximum:
        scale["min"] = minimum
    if draw(st.booleans()):
        scale["target_concurrency"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        scale["idle_timeout"] = draw(durations)
    return scale


service_specs = st.fixed_dictionaries(
    {},
    optional={
        "revision": names,
        "workdir": st.sampled_from(["/srv/app", "app", "./a/../b"]),
        "env": st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
            st.one_of(
                st.text(max_size=8),
                st.integers(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.booleans(),
            ),
            max_size=3,
        ),
        "labels": label_maps.map(
            lambda labels: {k: v for k, v in labels.items() if k not in ("app", "version")}
        ),
        "weight": st.integers(1, 100),
        "node_selector": label_maps,
        "scale": scales(),
        "health": st.fixed_dictionaries(
            {},
            optional={
                "path": st.sampled_from(["/", "/healthz", "/ready?full=1"]),
                "interval": durations,
                "timeout": durations,
                "healthy_threshold": st.integers(1, 5),
                "unhealthy_threshold": st.integers(1, 5),
            },
        ),
    },
)
services = st.builds(
    lambda name, run, spec: {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {**run, **spec},
    },
    names,
    st.one_of(
        st.builds(lambda app: {"app": app}, st.sampled_from(["app:app", "pkg.mod:make.app"])),
        st.builds(lambda command: {"command": command}, st.lists(st.text(min_size=1), min_size=1)),
    ),
    service_specs,
)


@PROPERTY
@given(st.one_of(virtual_services, destination_rules, services))
def test_to_document_round_trips_every_valid_document(doc: dict[str, object]) -> None:
    """parse_document(to_document(r)) == r for generated valid documents of every kind."""
    resource = parse_document(doc)
    canonical = to_document(resource)
    assert parse_document(canonical) == resource
    assert parse_document(json.loads(json.dumps(canonical))) == resource
    assert to_document(parse_document(canonical)) == canonical


def test_stored_resources_parse_each_document_once() -> None:
    """A document object seen before gives the same resource back; a new object is parsed;
    a key that left the store is forgotten."""
    from shoal.resources.manifest import StoredResources

    stored = StoredResources()
    doc = service_doc()
    first = stored.parse("Service", {"hello": doc})["hello"]
    assert stored.parse("Service", {"hello": doc})["hello"] is first
    changed = service_doc(weight=2)
    again = stored.parse("Service", {"hello": changed})["hello"]
    assert again is not first and again == parse_document(changed)
    assert stored.parse("Service", {}) == {}
    assert stored.parse("Service", {"hello": changed})["hello"] is not again


def test_a_service_says_what_its_instances_speak() -> None:
    """``spec.protocol``: http (the default, left out of the canonical spec so that existing
    revisions keep their names), h2c or grpc; anything else names the field and value."""
    plain = parse_document(service_doc())
    assert isinstance(plain, Service) and plain.protocol == "http"
    assert "protocol" not in service_spec(plain)
    grpc = parse_document(service_doc(protocol="grpc"))
    assert isinstance(grpc, Service) and grpc.protocol == "grpc"
    assert service_spec(grpc)["protocol"] == "grpc" and grpc.revision != plain.revision
    error = manifest_error(service_doc(protocol="http2"))
    assert (error.field, error.value) == ("spec.protocol", "http2")
    assert "must be one of http, h2c, grpc" in str(error)


def test_an_endpoint_carries_its_protocol_through_the_registry() -> None:
    """The registry record says what the instance speaks; an old record (none) means http."""
    endpoint = Endpoint(
        id="a", service="s", revision="v1", node="n", address="127.0.0.1", port=1, protocol="h2c"
    )
    assert Endpoint.from_json(endpoint.to_json()).protocol == "h2c"
    old = json.loads(endpoint.to_json())
    del old["protocol"]
    assert Endpoint.from_json(json.dumps(old)).protocol == "http"


def test_header_operations_and_mirror_percentage_parse_and_read_back() -> None:
    """Istio's header manipulation (route and destination level) and mirrorPercentage land
    in the model with lower-case names and are written back to an equal value."""
    doc = virtual_service_doc(
        {
            "headers": {
                "request": {"set": {"X-Test": "a b"}, "add": {"x-more": "1"}, "remove": ["Cookie"]},
                "response": {"remove": ["server"]},
            },
            "route": [
                {
                    "destination": {"host": "reviews", "subset": "v1"},
                    "headers": {"response": {"add": {"x-v": "1"}}},
                }
            ],
            "mirror": {"host": "reviews", "subset": "v2"},
            "mirrorPercentage": {"value": 50},
        }
    )
    parsed = parse_document(doc)
    assert isinstance(parsed, VirtualService)
    rule = parsed.http[0]
    assert rule.headers is not None and rule.headers.request is not None
    assert rule.headers.request.set == (("x-test", "a b"),)
    assert rule.headers.request.remove == ("cookie",)
    assert rule.mirror_percentage == 50.0
    assert rule.route[0].headers is not None
    assert parse_document(to_document(parsed)) == parsed


@pytest.mark.parametrize(
    ("rule", "field", "said"),
    [
        (
            {"headers": {"request": {"set": {"Host": "x"}}}},
            "spec.http[0].headers.request.set.Host",
            "rewrite.authority",
        ),
        (
            {"headers": {"response": {"remove": ["content-length"]}}},
            "spec.http[0].headers.response.remove[0]",
            "cannot change",
        ),
        (
            {"headers": {"request": {"add": {"x-a": "line\nbreak"}}}},
            "spec.http[0].headers.request.add.x-a",
            "no line breaks",
        ),
        ({"mirrorPercentage": {"value": 10}}, "spec.http[0].mirrorPercentage", "needs mirror"),
    ],
)
def test_route_actions_refused(rule: dict[str, object], field: str, said: str) -> None:
    """Headers a route may not touch, values that are not header values and a
    mirrorPercentage without a mirror are errors naming the field."""
    error = manifest_error(virtual_service_doc({**rule, "route": [{"destination": {"host": "r"}}]}))
    assert error.field == field
    assert said in error.reason


def test_redirect_and_direct_response_parse_and_exclude_a_route() -> None:
    """redirect and directResponse read back to equal values; either with a route, or both,
    is an error naming the second; a redirect code that is not one is refused."""
    both = virtual_service_doc(
        {"redirect": {"uri": "/x"}, "directResponse": {"status": 404}},
    )
    error = manifest_error(both)
    assert (error.field, "exclude each other" in error.reason) == (
        "spec.http[0].directResponse",
        True,
    )
    with_route = virtual_service_doc(
        {"redirect": {"uri": "/x"}, "route": [{"destination": {"host": "r"}}]}
    )
    assert manifest_error(with_route).field == "spec.http[0].redirect"
    for rule in (
        {"redirect": {"uri": "/x", "authority": "b.example", "port": 8443, "scheme": "https"}},
        {"redirect": {"uri": "/x", "redirectCode": 307}},
        {"directResponse": {"status": 503, "body": {"string": "down"}}},
        {"directResponse": {"status": 200, "body": {"bytes": "AAEC"}}},
        {"directResponse": {"status": 204}},
    ):
        parsed = parse_document(virtual_service_doc(rule))
        assert parse_document(to_document(parsed)) == parsed, rule
    error = manifest_error(virtual_service_doc({"redirect": {"redirectCode": 200}}))
    assert error.field == "spec.http[0].redirect.redirectCode"


@pytest.mark.parametrize(
    "spec",
    [
        {"httpHeaderName": "X-User"},
        {"httpCookie": {"name": "session", "path": "/", "ttl": "1h"}},
        {"httpCookie": {"name": "session"}},
        {"useSourceIp": True, "ringHash": {"minimumRingSize": 1024}},
        {"httpQueryParameterName": "user", "maglev": {"tableSize": 65537}},
    ],
)
def test_consistent_hash_parses_and_reads_back(spec: dict[str, object]) -> None:
    """Each key kind of loadBalancer.consistentHash lands in the model and reads back."""
    rule = parse_document(
        destination_rule_doc(trafficPolicy={"loadBalancer": {"consistentHash": spec}})
    )
    assert isinstance(rule, DestinationRule)
    assert rule.traffic_policy.consistent_hash is not None
    assert parse_document(to_document(rule)) == rule


@pytest.mark.parametrize(
    ("balancer", "said"),
    [
        ({"consistentHash": {"httpHeaderName": "a", "useSourceIp": True}}, "exactly one"),
        ({"consistentHash": {}}, "exactly one"),
        ({"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}, "one of simple"),
        ({"consistentHash": {"useSourceIp": False}}, "only true"),
    ],
)
def test_consistent_hash_refusals(balancer: dict[str, object], said: str) -> None:
    """One key, and either simple or consistentHash."""
    error = manifest_error(destination_rule_doc(trafficPolicy={"loadBalancer": balancer}))
    assert said in error.reason


def test_query_params_parse_and_read_back() -> None:
    """match.queryParams keeps names as written and reads back."""
    doc = virtual_service_doc(
        {
            "match": [{"queryParams": {"User": {"exact": "ana"}, "v": {"regex": "[0-9]+"}}}],
            "route": [{"destination": {"host": "reviews"}}],
        }
    )
    parsed = parse_document(doc)
    assert isinstance(parsed, VirtualService)
    assert [name for name, _ in parsed.http[0].match[0].query_params] == ["User", "v"]
    assert parse_document(to_document(parsed)) == parsed


def test_destination_rule_tls_mode() -> None:
    """tls.mode ISTIO_MUTUAL and DISABLE read back, and so do SIMPLE/MUTUAL with their files
    and SNI (TLS originated to a destination outside Shoal); files with Shoal's own modes, or
    MUTUAL without a client certificate, are refused."""
    for tls in (
        {"mode": "ISTIO_MUTUAL"},
        {"mode": "DISABLE"},
        {"mode": "SIMPLE", "sni": "x.example", "caCertificates": "/ca.pem"},
        {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/c.key"},
    ):
        rule = parse_document(destination_rule_doc(trafficPolicy={"tls": tls}))
        assert isinstance(rule, DestinationRule) and rule.traffic_policy.tls_mode == tls["mode"]
        assert parse_document(to_document(rule)) == rule
    error = manifest_error(
        destination_rule_doc(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL", "sni": "x"}})
    )
    assert error.field == "spec.trafficPolicy.tls.sni" and "SIMPLE or MUTUAL" in error.reason
    error = manifest_error(destination_rule_doc(trafficPolicy={"tls": {"mode": "MUTUAL"}}))
    assert "clientCertificate" in error.reason
    error = manifest_error(
        destination_rule_doc(trafficPolicy={"tls": {"mode": "SIMPLE", "credentialName": "x"}})
    )
    assert "give the files" in error.reason


def test_cors_policy_parses_and_reads_back() -> None:
    """corsPolicy reads back; Istio's deprecated allowOrigin says to write allowOrigins."""
    cors = {
        "allowOrigins": [{"exact": "https://a.example"}, {"prefix": "https://b."}],
        "allowMethods": ["GET"],
        "allowHeaders": ["x-token"],
        "exposeHeaders": ["x-id"],
        "maxAge": "1h",
        "allowCredentials": True,
    }
    rule = {"corsPolicy": cors, "route": [{"destination": {"host": "reviews"}}]}
    parsed = parse_document(virtual_service_doc(rule))
    assert parse_document(to_document(parsed)) == parsed
    rule = {"corsPolicy": {"allowOrigin": ["*"]}, "route": [{"destination": {"host": "r"}}]}
    error = manifest_error(virtual_service_doc(rule))
    assert error.field == "spec.http[0].corsPolicy.allowOrigin"
    assert "write allowOrigins" in error.reason


def test_source_labels_parse_and_read_back() -> None:
    """match.sourceLabels are labels (checked as such) and read back."""
    doc = virtual_service_doc(
        {
            "match": [{"sourceLabels": {"app": "reviews", "version": "v2"}}],
            "route": [{"destination": {"host": "ratings"}}],
        }
    )
    parsed = parse_document(doc)
    assert isinstance(parsed, VirtualService)
    assert parsed.http[0].match[0].source_labels == (("app", "reviews"), ("version", "v2"))
    assert parse_document(to_document(parsed)) == parsed
    bad = virtual_service_doc(
        {"match": [{"sourceLabels": {"version": 2}}], "route": [{"destination": {"host": "r"}}]}
    )
    error = manifest_error(bad)
    assert (error.field, error.value) == ("spec.http[0].match[0].sourceLabels.version", 2)


def test_a_service_names_its_account() -> None:
    """``spec.service_account`` (Kubernetes' ``default`` when unset, then left out of the
    canonical spec so that existing revisions keep their names) reads back."""
    plain = parse_document(service_doc())
    assert isinstance(plain, Service) and plain.service_account == "default"
    assert "service_account" not in service_spec(plain)
    named = parse_document(service_doc(service_account="bookinfo-reviews"))
    assert isinstance(named, Service) and named.service_account == "bookinfo-reviews"
    assert parse_document(to_document(named)) == named
    error = manifest_error(service_doc(service_account="Not_A_Name"))
    assert (error.field, error.value) == ("spec.service_account", "Not_A_Name")


def test_tags_change_in_place_and_read_back() -> None:
    """``spec.tags`` (Knative's traffic tags) are DNS labels, kept sorted and once, and are not
    part of the revision: the same spec with other tags is the same revision."""
    plain = parse_document(service_doc())
    tagged = parse_document(service_doc(tags=["candidate", "blue", "candidate"]))
    assert isinstance(plain, Service) and isinstance(tagged, Service)
    assert tagged.tags == ("blue", "candidate") and tagged.revision == plain.revision
    assert parse_document(to_document(tagged)) == tagged
    error = manifest_error(service_doc(tags=["Not_A_Label"]))
    assert error.field == "spec.tags[0]"
