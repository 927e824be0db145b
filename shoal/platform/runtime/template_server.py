"""The template's fork server: one fork per request from its agent, until the agent hangs up.

The template has no event loop and no thread when it forks (:func:`thread_count` checks the
latter): its loops are ``select.poll`` over blocking sockets, and signals arrive through a
wakeup socket (:class:`Signals`). Its control connection is one end of a socket pair the agent
made, inherited as an fd. :class:`Server` answers requests; it reaps every child on
SIGCHLD, so none stays a zombie, and stops on SIGTERM/SIGINT or when the agent hangs up,
without touching the instances it forked (their slots in the agent own and stop them).

The forked child calls ``setsid()`` before the reply is sent (so ``killpg(pid)`` reaches it at
once), points stdin at /dev/null and stdout/stderr at the log file that came with the request
(the template cannot open the agent's log directory: it may run as the service's user) and drops
the template's
signal handlers; :class:`Server` then returns its request, for the caller to become the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback

from shoal.platform.runtime.template_protocol import MAX_MESSAGE, SpawnRequest, parse_request

__all__ = ["Server", "Signals", "flush_stdio", "log", "thread_count"]

# The template process's one logger, for this module and those it runs with: its main() sends
# it to stderr (the template's log file). Named here, not by __name__: under ``python -m`` the
# entry module is ``__main__``.
log = logging.getLogger("shoal.platform.runtime.template_process")


def thread_count() -> int:
    """The threads of this process, C threads too: forking is safe only with one."""
    try:
        return len(os.listdir("/proc/self/task"))  # C threads too, not only Python's
    except OSError:  # pragma: no cover - no /proc
        import threading

        return threading.active_count()


def _redirect(out: int) -> None:
    """stdin from /dev/null, stdout and stderr to ``out`` (the log, opened by the agent)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)


def flush_stdio() -> None:
    """Flush stdout and stderr, so that a forked child does not write their buffers again."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class Signals:
    """SIGCHLD, SIGTERM and SIGINT as bytes on a socket that the accept loop polls."""

    WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> Signals:
        self.read, self.write = socket.socketpair()
        self.read.setblocking(False)
        self.write.setblocking(False)
        signal.set_wakeup_fd(self.write.fileno(), warn_on_full_buffer=False)
        for sig in self.WATCHED:
            signal.signal(sig, _ignore)  # a Python handler makes the C handler write the byte
        return self

    def pending(self) -> set[int]:
        """The signals that arrived since the last call."""
        try:
            return set(self.read.recv(256))
        except BlockingIOError:
            return set()

    def restore(self) -> None:
        """Back to a fresh interpreter's handlers (in a forked instance)."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(-1)
        self.read.close()
        self.write.close()


def _ignore(signum: int, frame: object) -> None:
    """The work happens in the accept loop, which the wakeup byte wakes."""


class Server:
    """The request loop: one fork per request, reaping on SIGCHLD, until the agent hangs up."""

    def __init__(self, conn: socket.socket, signals: Signals) -> None:
        self.conn = conn
        self.signals = signals
        self.forked = 0

    def run(self) -> SpawnRequest | None:
        """Serve until told to stop (None) or, in a forked child, return its request."""
        poller = select.poll()
        poller.register(self.conn, select.POLLIN)
        poller.register(self.signals.read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                pending = self.signals.pending()
                if signal.SIGCHLD in pending:
                    self._reap()
                if pending & {signal.SIGTERM, signal.SIGINT}:
                    log.info("stopping on a signal (%d instances forked)", self.forked)
                    return None
                if self.conn.fileno() not in ready:
                    continue
                try:
                    data, fds, flags, _ = socket.recv_fds(self.conn, MAX_MESSAGE, 1)
                except OSError:
                    data, fds, flags = b"", [], 0
                if not data:
                    log.info("the agent hung up; exiting (%d instances forked)", self.forked)
                    return None
                try:
                    child = self._serve(data, fds, truncated=bool(flags & socket.MSG_TRUNC))
                finally:
                    for fd in fds:
                        os.close(fd)
                if child is not None:
                    return child
        except OSError as e:  # the agent went away mid-reply
            log.info("control socket: %s; exiting", e)
            return None
        finally:
            self._reap()

    def _serve(self, data: bytes, fds: list[int], *, truncated: bool) -> SpawnRequest | None:
        try:
            if truncated:
                raise ValueError(f"request longer than {MAX_MESSAGE} bytes")
            if len(fds) != 1:
                raise ValueError(f"expected the log file attached, got {len(fds)} fds")
            request = parse_request(data)
        except ValueError as e:
            self.conn.sendall(json.dumps({"error": f"bad request: {e}"}).encode())
            return None
        try:
            pid = self._fork(fds[0])
        except OSError as e:
            self.conn.sendall(json.dumps({"error": f"fork failed: {e}"}).encode())
            return None
        if pid == 0:
            return request
        self.forked += 1
        pidfd = os.pidfd_open(pid)  # before any reap: it names this process and no other
        try:
            socket.send_fds(self.conn, [json.dumps({"pid": pid}).encode()], [pidfd])
        finally:
            os.close(pidfd)
        return None

    def _fork(self, logfile: int) -> int:
        """Fork; the child has its own session before the parent returns its pid."""
        session_read, session_write = os.pipe()
        flush_stdio()
        try:
            pid = os.fork()
        except OSError:
            os.close(session_read)
            os.close(session_write)
            raise
        if pid == 0:
            try:
                os.setsid()
                os.close(session_write)
                os.close(session_read)
                self.signals.restore()
                _redirect(logfile)
            except BaseException:  # never back into the template's loop
                traceback.print_exc()
                flush_stdio()
                os._exit(1)
            return 0
        os.close(session_write)
        os.read(session_read, 1)  # EOF once the child has closed its end (or died)
        os.close(session_read)
        return pid

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            log.info("instance %d exited with code %d", pid, os.waitstatus_to_exitcode(status))
