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
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
STOP_TIMEOUT = 45.0  # seconds the workers get to finish once told to stop


def component(worker: int | None) -> str:
    """How a worker names itself in acks, reports and metrics (``gateway`` when alone)."""
    return "gateway" if worker is None else f"gateway/{worker}"


def run_workers(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers, each ``python -m shoal <argv> --worker K``, until SIGTERM/SIGINT;
    return the exit code (0 once every worker stopped on request)."""
    stopping: list[int] = []  # a signal handler only appends: no lock in a handler

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "shoal", *argv, "--worker", str(index)])

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    workers = [start(i) for i in range(count)]
    died: dict[int, float] = {}  # worker index -> when it was seen dead
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(workers):
            if proc.poll() is None:
                continue
            now = time.monotonic()
            if i not in died:
                log.warning("gateway worker %d exited (%s); restarting", i, proc.returncode)
                died[i] = now
            elif now - died[i] >= RESTART_DELAY:
                del died[i]
                workers[i] = start(i)
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(stopping[0])
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0
