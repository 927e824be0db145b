"""Pre-warmed template processes: an ``app:`` instance is forked, not started from scratch.

A fresh instance spends ~300 ms importing hypercorn, uvloop and the app's dependencies before it
serves. A template has imported them already and forks an instance on demand, which serves in
~10 ms. One template runs per service revision per agent; the agent starts it on first use and
keeps it, so a revision scaled to zero comes back fast.

The template process (``python -m shoal.platform.runtime.template_process MODULE:ATTR
--control-fd FD``, FD its end of a socket pair the agent made; it may run as the service's own
user, see :mod:`.isolation`):

1. imports the runtime (hypercorn, uvloop), then imports the app in a throwaway child that
   reports the modules it pulled in, and imports those itself — except the user's own code (the
   app's package and files under the workdir), which every instance imports for itself with its
   own environment (``SHOAL_INSTANCE``, ``PORT``), exactly as a fresh interpreter would. An app
   that cannot be imported fails here, once;
2. refuses to serve (exit 3) if it has more than one thread: forking one is unsafe;
3. says it is ready and serves requests until the agent hangs up or SIGTERM/SIGINT, then exits
   without touching the instances it forked (their slots in the agent own and stop them).

The control protocol is :mod:`.template_protocol`; what is imported ahead,
:mod:`.template_warmup`; the request loop and the fork, :mod:`.template_server`. A forked child
replaces its environment, re-seeds ``random`` and then runs what
``python -m shoal.platform.runtime.serve`` runs, returning through ``main`` so that it exits like
any interpreter (atexit handlers, non-daemon threads).

The agent side is :mod:`.template_pool`; a failure to start or use a template is a
:class:`~.template_protocol.TemplateError`, and the caller falls back to a plain interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import socket
import sys
import time

from shoal.platform.runtime.template_protocol import (
    EXIT_UNUSABLE,
    SpawnRequest,
    TemplateError,
    elapsed_ms,
)
from shoal.platform.runtime.template_server import (
    Server,
    Signals,
    log,
    thread_count,
)
from shoal.platform.runtime.template_warmup import warm


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; returns in the template when it is done, and in every forked
    instance after that instance has served (``serve.serve_forever``)."""
    parser = argparse.ArgumentParser(prog="shoal-template")
    parser.add_argument("app")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    _only_fds(args.control_fd)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s template %(levelname)s: %(message)s"))
    log.addHandler(handler)  # not the root logger: an instance configures that itself
    log.setLevel(logging.INFO)
    log.propagate = False
    comm = _rename("shoal-template")  # tells it from its instances in ps -o comm, top
    child = _template(args.app, socket.socket(fileno=args.control_fd), args.workdir)
    if child is None:
        return
    _rename(comm)
    log.removeHandler(handler)
    # The forked instance, with the template's sockets closed: become what serve.main runs.
    from shoal.platform.runtime import serve

    os.environ.clear()
    os.environ.update(child.env)
    random.seed()  # also done by ``random`` at fork; any other RNG state is shared (see README)
    serve.serve_forever(serve.load_app(args.app), child.port)


def _template(app: str, conn: socket.socket, workdir: str | None) -> SpawnRequest | None:
    """Warm up, then serve the agent on ``conn``; returns None to exit, or, in a forked child,
    its request."""
    with conn:
        try:
            return _warm_and_serve(app, conn, workdir)
        except TemplateError as e:
            log.error("%s", e)
            sys.exit(EXIT_UNUSABLE)


def _warm_and_serve(app: str, conn: socket.socket, workdir: str | None) -> SpawnRequest | None:
    if workdir:
        sys.path.insert(0, workdir)
    from shoal.platform.runtime import serve  # hypercorn, h11, h2, wsproto …

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

    started = time.monotonic()
    count = warm(app, root=workdir or os.getcwd(), load_app=serve.load_app)
    threads = thread_count()
    if threads != 1:
        raise TemplateError(f"{threads} threads after importing {app}: forking is unsafe")
    log.info("warm in %.0f ms (%d modules imported ahead)", elapsed_ms(started), count)
    with Signals() as signals:
        conn.sendall(json.dumps({"ready": True}).encode())
        return Server(conn, signals).run()


def _only_fds(control: int) -> None:
    """Close every descriptor but stdio and ``control``: what the node's loop left open in this
    process (uvloop's spawn leaves the copies it made of the child's stdio), which every
    instance forked from here would inherit."""
    os.closerange(3, control)
    os.closerange(control + 1, os.sysconf("SC_OPEN_MAX"))


def _rename(name: str) -> str:
    """Set this process's name (``/proc/self/comm``); the previous one."""
    try:
        with open("/proc/self/comm", "r+") as comm:
            old = comm.read().strip()
            comm.seek(0)
            comm.write(name[:15])
    except OSError:  # pragma: no cover - no /proc
        return name
    return old


if __name__ == "__main__":
    main()
