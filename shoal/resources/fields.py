"""Typed readers for the fields of a manifest.

A parser here takes a raw YAML value and the dotted path it was found at
(``spec.http[0].route[1].weight``) and either returns a clean Python value or raises
:class:`~shoal.errors.ManifestError` naming that path and the bad value. :class:`Section` wraps
one mapping: it rejects keys it does not know on sight, so no field is ever silently ignored.

Durations follow Istio (``"1s"``, ``"500ms"``, ``"1m30s"``, ``"100us"``) and are float seconds;
a bare number is read as seconds.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal, localcontext
from typing import TypeVar, overload

from shoal.errors import ManifestError
from shoal.resources.hosts import check_namespace

T = TypeVar("T")
Parser = Callable[[object, str], T]

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|m|s|us|µs|ns))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = (
    ("h", Decimal(3600)),
    ("m", Decimal(60)),
    ("s", Decimal(1)),
    ("ms", Decimal("0.001")),
    ("us", Decimal("0.000001")),
    ("µs", Decimal("0.000001")),
    ("ns", Decimal("0.000000001")),
)
_DURATION_HINT = "must be a duration such as '1s', '500ms', '1m' or a number of seconds"


def join(path: str, key: str) -> str:
    """The path of ``key`` inside ``path``; keys that are not plain words are bracketed."""
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def _unit_seconds(unit: str) -> Decimal:
    return next(seconds for name, seconds in _UNIT_SECONDS if name == unit)


def parse_duration(value: object, field: str) -> float:
    """Seconds in an Istio duration (``"1s"``, ``"500ms"``, ``"1m30s"``) or a bare number.

    Raises ManifestError naming ``field`` and the value when it is not a non-negative, finite
    duration.
    """
    if isinstance(value, bool):
        raise ManifestError(_DURATION_HINT, field=field, value=value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ManifestError("duration is too large", field=field, value=value) from None
    elif isinstance(value, str):
        if value.startswith("-"):
            raise ManifestError("duration must not be negative", field=field, value=value)
        if value == "0":
            return 0.0
        if not _DURATION.fullmatch(value):
            raise ManifestError(_DURATION_HINT, field=field, value=value)
        # Decimal arithmetic with enough digits is exact, so "100ms" is the float nearest 0.1
        # and format_duration's output reads back to the very same float.
        with localcontext() as context:
            context.prec = max(28, 2 * len(value) + 20)
            total = sum(
                (Decimal(number) * _unit_seconds(unit))
                for number, unit in _DURATION_PART.findall(value)
            )
            seconds = float(total)
    else:
        raise ManifestError(_DURATION_HINT, field=field, value=value)
    if math.isnan(seconds) or seconds < 0:
        raise ManifestError("duration must not be negative", field=field, value=value)
    if math.isinf(seconds):
        raise ManifestError("duration is too large", field=field, value=value)
    return seconds


def positive_duration(value: object, field: str) -> float:
    """A duration that must be greater than zero (timeouts, intervals)."""
    seconds = parse_duration(value, field)
    if seconds == 0:
        raise ManifestError("duration must be greater than zero", field=field, value=value)
    return seconds


def format_duration(seconds: float) -> str:
    """The Istio duration string for ``seconds``, in the largest whole unit that reads back
    exactly (``"1m"``, ``"500ms"``), else decimal seconds; ``parse_duration`` inverts it."""
    if seconds == 0:
        return "0s"
    exact = Decimal(repr(seconds))
    with localcontext() as context:
        context.prec = len(repr(seconds)) + 40
        for unit, unit_seconds in _UNIT_SECONDS:
            if unit == "µs":
                continue
            count = exact / unit_seconds
            if count == count.to_integral_value():
                text = f"{int(count)}{unit}"
                if parse_duration(text, "") == seconds:
                    return text
    return f"{exact:f}s"


def string(value: object, field: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ManifestError("must be a non-empty string", field=field, value=value)
    return value


def text(value: object, field: str) -> str:
    """Any string, the empty one included."""
    if not isinstance(value, str):
        raise ManifestError("must be a string", field=field, value=value)
    return value


def matching(pattern: re.Pattern[str], what: str, max_length: int | None = None) -> Parser[str]:
    """A parser of strings that fully match ``pattern`` (described to the user as ``what``)."""

    def parse(value: object, field: str) -> str:
        if (
            not isinstance(value, str)
            or not pattern.fullmatch(value)
            or (max_length is not None and len(value) > max_length)
        ):
            raise ManifestError(f"must be {what}", field=field, value=value)
        return value

    return parse


def choice(choices: Mapping[str, T]) -> Parser[T]:
    """A parser of strings that are keys of ``choices``; it gives their value."""

    def parse(value: object, field: str) -> T:
        if not isinstance(value, str) or value not in choices:
            raise ManifestError(f"must be one of {', '.join(choices)}", field=field, value=value)
        return choices[value]

    return parse


def one_of(choices: Collection[str]) -> Parser[str]:
    """A parser of strings that are one of ``choices``."""
    return choice({c: c for c in choices})


dns_label = matching(
    DNS_LABEL, "a DNS label (lower-case letters, digits and '-', at most 63 characters)", 63
)
dns_subdomain = matching(
    DNS_SUBDOMAIN,
    "a DNS name (lower-case letters, digits, '-' and '.', at most 253 characters)",
    253,
)
_HOST = matching(re.compile(r"[^\s/:]+"), "a host name (no spaces, '/' or ':')")


def host_name(value: object, field: str) -> str:
    """A host as Istio writes one; not a service of another namespace."""
    return check_namespace(_HOST(value, field), field)


def boolean(value: object, field: str) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ManifestError("must be true or false", field=field, value=value)
    return value


def integer(minimum: int, maximum: int | None = None) -> Parser[int]:
    """A parser of integers in ``[minimum, maximum]``; booleans and floats are refused."""
    if maximum is None:
        expected = f"must be an integer >= {minimum}"
    else:
        expected = f"must be an integer from {minimum} to {maximum}"

    def parse(value: object, field: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise ManifestError(expected, field=field, value=value)
        return value

    return parse


def percent(value: object, field: str) -> float:
    """A number from 0 to 100 (int or float), as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 100  # also refuses NaN
    ):
        raise ManifestError("must be a number from 0 to 100", field=field, value=value)
    return float(value)


def elements(value: object, field: str) -> list[tuple[object, str]]:
    """The items of a list, each with its own path (``field[i]``)."""
    if not isinstance(value, list):
        raise ManifestError("must be a list", field=field, value=value)
    return [(item, f"{field}[{index}]") for index, item in enumerate(value)]


def list_of(parse: Parser[T], *, min_items: int = 0) -> Parser[tuple[T, ...]]:
    """A parser of lists whose items are each read by ``parse``."""

    def parse_list(value: object, field: str) -> tuple[T, ...]:
        items = elements(value, field)
        if len(items) < min_items:
            raise ManifestError(
                f"must be a list of at least {min_items} item(s)", field=field, value=value
            )
        return tuple(parse(item, path) for item, path in items)

    return parse_list


def entries(value: object, field: str) -> list[tuple[str, object, str]]:
    """The ``(key, value, path)`` entries of a mapping whose keys are strings."""
    if not isinstance(value, Mapping):
        raise ManifestError("must be a mapping", field=field, value=value)
    result = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise ManifestError("keys must be strings", field=field, value=key)
        result.append((key, item, join(field, key)))
    return result


def string_map(value: object, field: str) -> tuple[tuple[str, str], ...]:
    """A mapping of strings to strings, sorted by key."""
    return tuple(sorted((key, text(item, path)) for key, item, path in entries(value, field)))


def _label_key(key: str, field: str) -> str:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix)))
        or len(name) > 63
        or not _LABEL_NAME.fullmatch(name)
    ):
        raise ManifestError(
            "must be a label name (an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.')",
            field=field,
            value=key,
        )
    return key


def labels(value: object, field: str) -> tuple[tuple[str, str], ...]:
    """Kubernetes-style labels: valid names and values (quote numbers in YAML), sorted by name."""
    result = []
    for key, item, path in entries(value, field):
        _label_key(key, path)
        if not isinstance(item, str) or (
            item and (len(item) > 63 or not _LABEL_NAME.fullmatch(item))
        ):
            raise ManifestError(
                "must be a label value (a string of at most 63 letters, digits, '-', '_' or "
                "'.'; quote numbers and booleans)",
                field=path,
                value=item,
            )
        result.append((key, item))
    return tuple(sorted(result))


def _unknown(key: str, allowed: Collection[str]) -> str:
    """Why ``key`` is refused, and what may be written instead."""
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.75)
    if close:
        return f"field not supported by Shoal: did you mean {close[0]}?"
    return f"field not supported by Shoal (fields here: {', '.join(sorted(allowed))})"


class Section:
    """One mapping of a manifest and its path; keys it does not allow are rejected on sight.

    A null value (``key:`` or ``key: null``) counts as absent, as in Kubernetes.
    """

    __slots__ = ("_data", "path")

    def __init__(
        self,
        value: object,
        path: str,
        allowed: Collection[str],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        """``hints``: for keys users write here that are not allowed, what to write instead."""
        if not isinstance(value, Mapping):
            raise ManifestError("must be a mapping", field=path, value=value)
        for key in value:
            if not isinstance(key, str):
                raise ManifestError("field names must be strings", field=path, value=key)
            if key not in allowed:
                hint = (hints or {}).get(key)
                raise ManifestError(
                    hint or _unknown(key, allowed), field=join(path, key), value=value[key]
                )
        self._data: Mapping[str, object] = value
        self.path = path

    def at(self, key: str) -> str:
        """The full path of ``key``."""
        return join(self.path, key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null."""
        return self._data.get(key) is not None

    def raw(self, key: str) -> object:
        """The unparsed value of ``key`` (None when absent)."""
        return self._data.get(key)

    @overload
    def get(self, key: str, parse: Parser[T]) -> T | None: ...

    @overload
    def get(self, key: str, parse: Parser[T], default: T) -> T: ...

    def get(self, key: str, parse: Parser[T], default: T | None = None) -> T | None:
        """``key`` read by ``parse``, or ``default`` when absent."""
        value = self._data.get(key)
        if value is None:
            return default
        return parse(value, self.at(key))

    def need(self, key: str, parse: Parser[T]) -> T:
        """``key`` read by ``parse``; an error when absent."""
        value = self._data.get(key)
        if value is None:
            raise ManifestError("required", field=self.at(key))
        return parse(value, self.at(key))


def section(allowed: Collection[str]) -> Parser[Section]:
    """A parser that wraps a mapping allowing ``allowed`` keys in a :class:`Section`."""

    def parse(value: object, field: str) -> Section:
        return Section(value, field, allowed)

    return parse


def put(out: dict[str, object], key: str, value: object, default: object = None) -> None:
    """Set ``out[key]`` unless ``value`` equals ``default`` (canonical documents omit them)."""
    if value != default:
        out[key] = value


def put_duration(
    out: dict[str, object], key: str, seconds: float | None, default: float | None = None
) -> None:
    """Set ``out[key]`` to the duration string of ``seconds`` unless it is None or ``default``."""
    if seconds is not None and seconds != default:
        out[key] = format_duration(seconds)
