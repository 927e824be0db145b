"""Child processes that do not outlive the process that started them.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is armed in the child between fork
and exec: when the thread that forked it ends, for whatever reason (SIGKILL included), the
kernel sends the child ``SIGTERM``, so it stops as it would on request (a node drains its
instances, Redis flushes its AOF). Elsewhere than on Linux nothing is armed.

The setting survives exec but not a change of user: :func:`die_with_parent` must run after
any ``setuid`` in the same ``preexec_fn``. It names the thread that forks as the parent:
spawn long-lived children from a thread that lives as long as they should.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":  # pragma: no cover
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl


_PRCTL = _prctl()  # looked up here, never between fork and exec


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that has the child receive ``sig`` when this process dies (also when
    it died before the child could arm it)."""
    parent = os.getpid()

    def arm() -> None:
        if _PRCTL is None:  # pragma: no cover
            return
        _PRCTL(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm
