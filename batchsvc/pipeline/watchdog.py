"""The hung-engine watchdog, and how a hung or frozen run is ended.

A run whose lease is renewed but whose engine gives no result for
`stuck_after_s` is hung (a wedged GPU, a deadlock in the engine). Nothing inside
the process can be trusted to recover it, so the worker kills itself; its
supervisor (supervisord under `make up`, the platform elsewhere) starts a fresh
one, the lease expires, and the lease checker sends the shard again. That start
counts as an attempt, like a crash.

A run whose lease is not renewed at all while its process still exists is frozen
(SIGSTOP, a paused VM): its heartbeat thread is frozen with it. The lease
checker re-drives its step and, when the process runs on the checker's own
host, kills it for the same reason. (Across hosts the platform's liveness probe
does that part.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StuckWatch:
    """When the engine last gave a result. Disarmed until the engine starts, so
    loading a model or reading a checkpoint never looks like a hang."""

    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def progress(self) -> None:
        with self._lock:
            self._last = self._clock()

    def disarm(self) -> None:
        with self._lock:
            self._last = None

    def stuck_for(self) -> float | None:
        """Seconds without a result, once that exceeds stuck_after_s; else None."""
        with self._lock:
            if self._last is None or self.stuck_after_s <= 0:
                return None
            idle = self._clock() - self._last
        return idle if idle >= self.stuck_after_s else None


def process_start_ticks(pid: int) -> int:
    """A process's start time (clock ticks since boot): with the pid, it names one
    process for good, even after the pid is reused. 0 when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def end_this_process(reason: str) -> None:
    """Kill this worker outright (no cleanup can be trusted in a hung process)."""
    log.error("watchdog: %s; killing this worker (pid %d) so that it is restarted", reason, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_frozen(host: str, pid: int, pid_start: int) -> bool:
    """Kill the process a lapsed lease names, when it is on this host and is still
    that same process (its heartbeat stopped, so it is frozen). True if killed."""
    if host != socket.gethostname() or pid == os.getpid() or not pid_start:
        return False
    if process_start_ticks(pid) != pid_start:
        return False  # gone, or the pid now belongs to someone else
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    log.error("watchdog: worker pid %d stopped renewing its lease; killed it so that it is restarted", pid)
    return True
