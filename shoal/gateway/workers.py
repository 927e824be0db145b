"""Several gateway processes on one port: ``shoal gateway --workers N``.

hypercorn's own multi-worker mode exits when one worker dies, so Shoal runs its own: the
parent starts N copies of its own command line, each told its index (``--worker K``), and
each binds the gateway's ports with ``SO_REUSEPORT``, so the kernel spreads connections over
them. Every worker is a full proxy: it follows the store, holds its own mesh certificate
(the same gateway identity), reports as ``gateway/K`` and acknowledges config as itself, so
``shoal apply --wait`` waits for every worker. A worker that dies is restarted after a
second; SIGTERM or SIGINT is passed to every worker, and the parent exits once all have.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from shoal.errors import PlatformError, StoreError, UserError
from shoal.store.children import die_with_parent

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
# Exit codes of a worker that stopped on purpose, with a one-line error (bad flags, no store, a
# port it cannot bind): the parent stops the others and exits with it, as a single gateway
# process would, instead of restarting it forever. A crash (1, a signal) is restarted.
_FINAL = frozenset({UserError.exit_code, StoreError.exit_code, PlatformError.exit_code})
STOP_TIMEOUT = 45.0  # seconds the workers get to finish once told to stop


WORKER_PREFIX = "gateway/"


def component(worker: int | None) -> str:
    """How a worker names itself in acks, reports and metrics (``gateway`` when alone)."""
    return "gateway" if worker is None else f"{WORKER_PREFIX}{worker}"


def default_workers() -> int:
    """One gateway process per core (of those this process may run on)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_workers(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers, each ``python -m shoal <argv> --worker K``, until SIGTERM/SIGINT
    or a worker that cannot work as configured; return the exit code (0 once every worker
    stopped on request, else that worker's)."""
    stopping: list[int] = []  # a signal handler only appends: no lock in a handler

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", *argv, "--worker", str(index)],
            preexec_fn=die_with_parent(),
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    workers = [start(i) for i in range(count)]
    died: dict[int, float] = {}  # worker index -> when it was seen dead
    code = 0
    while not stopping and not code:
        time.sleep(0.2)
        for i, proc in enumerate(workers):
            if proc.poll() is None:
                continue
            if proc.returncode in _FINAL:  # it said why (one line); a restart cannot help
                code = proc.returncode
                break
            now = time.monotonic()
            if i not in died:
                log.warning("gateway worker %d exited (%s); restarting", i, proc.returncode)
                died[i] = now
            elif now - died[i] >= RESTART_DELAY:
                del died[i]
                workers[i] = start(i)
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(stopping[0] if stopping else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return code
