"""The LLM worker's memory budget (`worker_max_rss_mb`).

A daemon thread of the worker samples the resident memory of the worker's
process tree (the worker, vLLM's engine-core process, the grammar compiler
child) every `interval_s`. Past the budget, the worker cannot be trusted to give
the memory back (a runaway grammar, a leak in the engine), so it ends itself:

1. whatever runs in it and registered with `exposed()` is told first (the shard
   records which of its requests were in flight, and lets its lease lapse), each
   within a few seconds;
2. one ERROR line gives the figures;
3. its child processes are killed (so the memory is free at once and no engine
   core is orphaned), and the process exits.

Its supervisor (supervisord under `make up`, the platform elsewhere) starts it
again; the shard comes back through its lease and runs its suspects one at a
time (batchsvc/pipeline/shards.py), so the request that busts the budget fails
alone with `worker_memory_exceeded`.

The exit code says whether requests were blamed. EXIT_REQUEST_BLAMED: a restart
is all it takes, and `make up`'s supervisord counts it as an expected exit (not a
crash), so a client sending many such requests cannot get the worker stopped as
a crash loop. EXIT_OVER_BUDGET: nothing to blame (over the budget while loading,
idle, or with nothing new learnt): a crash, and counted as one.

The thread needs the interpreter lock to run: a C extension that held it while
allocating would delay the check until it lets go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

CODE = "worker_memory_exceeded"
EXIT_REQUEST_BLAMED = 75  # EX_TEMPFAIL: start it again (scripts/stack.py: an expected exit)
EXIT_OVER_BUDGET = 70  # EX_SOFTWARE: a crash
INTERVAL_S = 0.5
_NOTIFY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Recorded:
    """What a callback of `exposed()` recorded: words for the ERROR line, and
    whether it named requests to blame."""

    note: str
    blamed: bool = False


# Told (rss_mb, budget_mb) when the budget is exceeded; says what it recorded, if anything.
Exposure = Callable[[float, int], "Recorded | None"]
_exposed: list[Exposure] = []
_exposed_lock = threading.Lock()


@contextlib.contextmanager
def exposed(callback: Exposure) -> Iterator[None]:
    """While the block runs, `callback` is told if the budget is exceeded, before
    the process exits. Callbacks are told innermost first."""
    with _exposed_lock:
        _exposed.append(callback)
    try:
        yield
    finally:
        with _exposed_lock:
            _exposed.remove(callback)


def tree_rss(pid: int | None = None) -> tuple[float, list[psutil.Process]]:
    """Resident memory (MB) of a process and all its descendants, and those descendants.
    Pages two of them share (libraries, shared memory) count in each: an overestimate,
    on the safe side."""
    root = psutil.Process(pid or os.getpid())
    children = root.children(recursive=True)
    total = 0
    for process in [root, *children]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total / 2**20, children


def _exit_hard(code: int) -> None:
    os._exit(code)


class MemoryWatch:
    """Samples this process tree's RSS; past `budget_mb`, ends the process (see the
    module's docstring). `sample` and `exit` are the real ones except in unit tests."""

    def __init__(
        self,
        budget_mb: int,
        *,
        interval_s: float = INTERVAL_S,
        sample: Callable[[], tuple[float, list[psutil.Process]]] = tree_rss,
        exit: Callable[[int], None] = _exit_hard,
    ):
        self.budget_mb = budget_mb
        self.interval_s = interval_s
        self.sample = sample
        self.exit = exit
        self.peak_mb = 0.0
        self.last_mb = 0.0  # the latest sample (the worker's metrics export it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One sample; True (after ending the process) when it is over the budget."""
        rss, children = self.sample()
        self.last_mb = rss
        self.peak_mb = max(self.peak_mb, rss)
        if self.budget_mb <= 0 or rss <= self.budget_mb:
            return False
        self._end(rss, children)
        return True

    def start(self) -> MemoryWatch:
        if self.budget_mb > 0:
            self._thread = threading.Thread(target=self._run, name="memory-budget", daemon=True)
            self._thread.start()
            log.info("memory budget: this worker ends itself past %d MB resident", self.budget_mb)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.check():
                    return
            except psutil.Error:  # a sample that failed: the next one is due soon
                log.debug("memory budget: sample failed", exc_info=True)

    def _end(self, rss: float, children: list[psutil.Process]) -> None:
        records = _notify(rss, self.budget_mb)
        code = EXIT_REQUEST_BLAMED if any(r.blamed for r in records) else EXIT_OVER_BUDGET
        log.error(
            "memory budget: worker pid %d and %d child processes hold %.0f MB resident, over worker_max_rss_mb "
            "%d MB%s; exiting (code %d) so that it is restarted",
            os.getpid(),
            len(children),
            rss,
            self.budget_mb,
            "".join(f"; {r.note}" for r in records),
            code,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.exit(code)


def _notify(rss: float, budget_mb: int) -> list[Recorded]:
    """Tell every registered callback, innermost first, each within _NOTIFY_TIMEOUT_S
    (a hung Redis must not keep a process that is over its budget alive)."""
    with _exposed_lock:
        callbacks = list(reversed(_exposed))
    records: list[Recorded] = []
    for callback in callbacks:
        result: list[Recorded | None] = []

        def call(callback: Exposure = callback, result: list[Recorded | None] = result) -> None:
            try:
                result.append(callback(rss, budget_mb))
            except Exception:
                log.exception("memory budget: could not record what this worker was running")

        thread = threading.Thread(target=call, name="memory-budget-notify", daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(_NOTIFY_TIMEOUT_S)
        if thread.is_alive():
            log.warning("memory budget: a record took over %.0fs; exiting without it", time.monotonic() - started)
        elif result and result[0] is not None:
            records.append(result[0])
    return records
