"""What the agent and its template processes share: the control protocol and its error.

Protocol, one ``SOCK_SEQPACKET`` message each way (JSON) over a socket pair the agent made (the
template inherits its end as an fd): the template says ``{"ready": true}`` once warm; then per
request ``{"port": N, "env": {...}}`` (a :class:`SpawnRequest`, at most :data:`MAX_MESSAGE`
bytes) with the instance's log file attached (``SCM_RIGHTS``: the template may run as a user
that cannot open it) → ``{"pid": P}`` with a pidfd of the new process attached
(``SCM_RIGHTS``, opened by the parent before it could reap the child, so it can never name a
recycled pid), or ``{"error": "..."}``. A template that cannot serve exits with
:data:`EXIT_UNUSABLE`; a failure to start or use a template is a :class:`TemplateError`, and the
caller falls back to a plain interpreter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from shoal.errors import PlatformError

__all__ = [
    "EXIT_UNUSABLE",
    "MAX_MESSAGE",
    "SpawnRequest",
    "TemplateError",
    "elapsed_ms",
    "parse_request",
]

MAX_MESSAGE = 1 << 20  # bytes; a request carries the instance's whole environment
EXIT_UNUSABLE = 3  # the template's exit code when it cannot serve (import error, threads)


class TemplateError(PlatformError):
    """A template could not be started or could not fork: start the instance without one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnRequest:
    """One fork request: the instance's port and its whole environment (its log file comes
    attached to the message)."""

    port: int
    env: dict[str, str]


def parse_request(data: bytes) -> SpawnRequest:
    """Decode a request message; ValueError names the bad field."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"request: expected an object, got {type(doc).__name__}")
    port, env = doc.get("port"), doc.get("env")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port: expected a TCP port, got {port!r}")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env: expected an object of strings")
    return SpawnRequest(port=port, env=env)


def elapsed_ms(since: float) -> float:
    """Milliseconds since ``since`` (a ``time.monotonic()`` reading)."""
    return (time.monotonic() - since) * 1000
