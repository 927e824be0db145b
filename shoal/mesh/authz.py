"""Authorization decisions with Istio's semantics, pure and precompiled.

Theory of operation, for one request to a workload with labels ``L`` from ``principal``:

1. A policy *applies* when ``L`` includes every one of its ``selector.matchLabels`` (a policy
   without a selector applies to every workload).
2. If an applicable DENY policy has a matching rule, the request is denied.
3. Otherwise, if no ALLOW policy applies, it is allowed.
4. Otherwise it is allowed iff an applicable ALLOW policy has a matching rule.

A *rule* matches when some entry of its ``from`` matches and some entry of its ``to`` matches
(an absent list does not constrain, so the rule ``{}`` matches everything; a policy without
rules matches nothing). In a source or operation every field set must hold: a value list
matches when any of its values does, a ``not`` list when none does.

Values match as Istio's do: exactly ``*`` matches any (present) value, ``*x`` is a suffix match,
``x*`` a prefix match, anything else is exact and case-sensitive. Principals are compared
without the ``spiffe://`` scheme (see :mod:`shoal.resources.security`); Istio's
service-account principals (``<td>/ns/default/sa/<account>``) stand for the Shoal IDs
(``<td>/svc/<service>``) of the services that run as that account; a caller with no
identity (plaintext, ``principal=None``) matches no ``principals`` list and so is never
excluded by ``notPrincipals``. Paths are matched without their query string and must be the
normalised path that is also forwarded.

Policies are compiled once per configuration snapshot (:func:`compile_policies`); a check then
does set look-ups and ``startswith``/``endswith`` on tuples, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.identity.spiffe import SCHEME

if TYPE_CHECKING:  # annotations only
    from shoal.resources import model

__all__ = [
    "Authorizer",
    "Decision",
    "WorkloadAuthorizer",
    "compile_policies",
    "evaluate",
    "mtls_mode",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome of a check: whether the request may pass, the policy that decided (None when
    no single policy did) and a reason for logs and ``x-shoal-cause`` details."""

    allowed: bool
    policy: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class _Values:
    """One compiled value list: exact values, prefixes, suffixes, or any."""

    any: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]

    @classmethod
    def of(cls, values: Iterable[str]) -> _Values:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        match_any = False
        for value in values:
            if value == "*":
                match_any = True
            elif value.startswith("*"):
                suffixes.append(value[1:])
            elif value.endswith("*"):
                prefixes.append(value[:-1])
            else:
                exact.add(value)
        return cls(match_any, frozenset(exact), tuple(prefixes), tuple(suffixes))

    def matches(self, value: str) -> bool:
        return (
            self.any
            or value in self.exact
            or value.startswith(self.prefixes)
            or value.endswith(self.suffixes)
        )


def _values(values: tuple[str, ...]) -> _Values | None:
    """None for an empty list: the field does not constrain."""
    return _Values.of(values) if values else None


@dataclass(frozen=True, slots=True)
class _Source:
    principals: _Values | None
    not_principals: _Values | None

    def matches(self, principal: str | None) -> bool:
        if self.principals is not None and (
            principal is None or not self.principals.matches(principal)
        ):
            return False
        return not (
            self.not_principals is not None
            and principal is not None
            and self.not_principals.matches(principal)
        )


@dataclass(frozen=True, slots=True)
class _Operation:
    methods: _Values | None
    not_methods: _Values | None
    paths: _Values | None
    not_paths: _Values | None

    def matches(self, method: str, path: str) -> bool:
        return (
            (self.methods is None or self.methods.matches(method))
            and (self.not_methods is None or not self.not_methods.matches(method))
            and (self.paths is None or self.paths.matches(path))
            and (self.not_paths is None or not self.not_paths.matches(path))
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    sources: tuple[_Source, ...]
    operations: tuple[_Operation, ...]

    def matches(self, principal: str | None, method: str, path: str) -> bool:
        return (not self.sources or any(s.matches(principal) for s in self.sources)) and (
            not self.operations or any(o.matches(method, path) for o in self.operations)
        )


@dataclass(frozen=True, slots=True)
class _Policy:
    name: str
    selector: tuple[tuple[str, str], ...]
    rules: tuple[_Rule, ...]

    def applies(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.selector)

    def matches(self, principal: str | None, method: str, path: str) -> bool:
        return any(rule.matches(principal, method, path) for rule in self.rules)


def _strip_scheme(value: str) -> str:
    return value[len(SCHEME) :] if value.startswith(SCHEME) else value


Accounts = Mapping[str, Collection[str]]
"""Service account -> the services that run as it (``Service.service_account``)."""

_ACCOUNT = re.compile(r"(?P<head>[^/]*)/ns/default/sa/(?P<account>[^/]*)")


def _as_services(principal: str, accounts: Accounts) -> tuple[str, ...]:
    """``principal`` with Istio's service-account form (``<td>/ns/default/sa/<account>``, also
    ``*/ns/default/sa/<account>`` and ``<td>/ns/default/sa/*``) turned into the Shoal IDs of
    the services running as that account (``<td>/svc/<service>``); any other principal, and
    one naming an account no service runs as (it matches no caller), as it is."""
    found = _ACCOUNT.fullmatch(principal)
    if found is None:
        return (principal,)
    head, account = found["head"], found["account"]
    if account == "*":
        return (f"{head}/svc/*",)
    services = sorted(accounts.get(account, ()))
    return tuple(f"{head}/svc/{service}" for service in services) or (principal,)


def _principals(principals: tuple[str, ...], accounts: Accounts) -> _Values | None:
    return _values(
        tuple(found for p in principals for found in _as_services(_strip_scheme(p), accounts))
    )


def _compile_source(source: model.Source, accounts: Accounts) -> _Source:
    return _Source(
        principals=_principals(source.principals, accounts),
        not_principals=_principals(source.not_principals, accounts),
    )


def _compile_operation(operation: model.Operation) -> _Operation:
    return _Operation(
        methods=_values(operation.methods),
        not_methods=_values(operation.not_methods),
        paths=_values(operation.paths),
        not_paths=_values(operation.not_paths),
    )


def _compile_rule(rule: model.Rule, accounts: Accounts) -> _Rule:
    return _Rule(
        sources=tuple(_compile_source(source, accounts) for source in rule.from_),
        operations=tuple(_compile_operation(operation) for operation in rule.to),
    )


def _compile(policy: model.AuthorizationPolicy, accounts: Accounts) -> _Policy:
    return _Policy(
        name=policy.name,
        selector=policy.match_labels,
        rules=tuple(_compile_rule(rule, accounts) for rule in policy.rules),
    )


def _request_path(path: str) -> str:
    """The path without query string or fragment, as Istio matches it."""
    for mark in ("?", "#"):
        cut = path.find(mark)
        if cut >= 0:
            path = path[:cut]
    return path


def _decide(
    deny: tuple[_Policy, ...],
    allow: tuple[_Policy, ...],
    principal: str | None,
    method: str,
    path: str,
) -> Decision:
    """Steps 2-4 of the module docstring, over policies that already apply."""
    if principal is not None:
        principal = _strip_scheme(principal)
    path = _request_path(path)
    for policy in deny:
        if policy.matches(principal, method, path):
            return Decision(
                allowed=False, policy=policy.name, reason=f"denied by DENY policy {policy.name}"
            )
    if not allow:
        return Decision(allowed=True, policy=None, reason="no ALLOW policy applies")
    for policy in allow:
        if policy.matches(principal, method, path):
            return Decision(
                allowed=True, policy=policy.name, reason=f"allowed by ALLOW policy {policy.name}"
            )
    return Decision(allowed=False, policy=None, reason="no ALLOW policy matched")


@dataclass(frozen=True, slots=True)
class WorkloadAuthorizer:
    """The policies that apply to one workload, selectors already resolved.

    Build it once per workload and snapshot with :meth:`Authorizer.for_workload`; ``check``
    then skips selector matching.
    """

    _deny: tuple[_Policy, ...]
    _allow: tuple[_Policy, ...]

    def check(self, principal: str | None, method: str, path: str) -> Decision:
        """The decision for a request from ``principal`` (a SPIFFE ID, with or without
        ``spiffe://``; None for a caller without identity) for ``method`` and ``path``."""
        return _decide(self._deny, self._allow, principal, method, path)


@dataclass(frozen=True, slots=True)
class Authorizer:
    """Compiled AuthorizationPolicies of one configuration snapshot; immutable, share freely.

    Policies are kept in name order, so the policy named in a Decision does not depend on the
    order the store returned them in.
    """

    _deny: tuple[_Policy, ...]
    _allow: tuple[_Policy, ...]

    def for_workload(self, target_labels: Mapping[str, str]) -> WorkloadAuthorizer:
        """The policies that apply to a workload with ``target_labels``."""
        return WorkloadAuthorizer(
            tuple(p for p in self._deny if p.applies(target_labels)),
            tuple(p for p in self._allow if p.applies(target_labels)),
        )

    def check(
        self, target_labels: Mapping[str, str], principal: str | None, method: str, path: str
    ) -> Decision:
        """The decision for a request to the workload with ``target_labels``; see
        :meth:`WorkloadAuthorizer.check` for the other arguments."""
        return self.for_workload(target_labels).check(principal, method, path)


def compile_policies(
    policies: Iterable[model.AuthorizationPolicy], accounts: Accounts | None = None
) -> Authorizer:
    """An :class:`Authorizer` for ``policies`` (validated model values); service-account
    principals match the services ``accounts`` says run as them."""
    ordered = sorted(policies, key=lambda policy: policy.name)
    accounts = accounts or {}
    return Authorizer(
        tuple(_compile(p, accounts) for p in ordered if p.action == "DENY"),
        tuple(_compile(p, accounts) for p in ordered if p.action == "ALLOW"),
    )


def evaluate(
    policies: Sequence[model.AuthorizationPolicy],
    target_labels: Mapping[str, str],
    principal: str | None,
    method: str,
    path: str,
) -> Decision:
    """The decision for one request under ``policies``; compile once with
    :func:`compile_policies` instead when checking many requests."""
    return compile_policies(policies).check(target_labels, principal, method, path)


def mtls_mode(
    policies: Iterable[model.PeerAuthentication], labels: Mapping[str, str]
) -> model.MtlsMode:
    """The mTLS mode of a workload with ``labels``: STRICT, PERMISSIVE or DISABLE.

    As Istio: a policy whose selector matches the workload wins over a mesh-wide one (no
    selector); UNSET inherits from the wider level. Where nothing sets a mode, Shoal's default is
    STRICT (Istio's is PERMISSIVE, for migrating plaintext workloads; Shoal runs every workload
    itself). Among several matching policies of one level, the first by name wins.
    """
    ordered = sorted(policies, key=lambda p: p.name)
    specific = [p for p in ordered if p.match_labels and _selects(p.match_labels, labels)]
    wide = [p for p in ordered if not p.match_labels]
    for level in (specific, wide):
        for policy in level[:1]:
            if policy.mtls_mode != "UNSET":
                return policy.mtls_mode
    return "STRICT"


def _selects(selector: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)
