"""Leases in motion: the heartbeat that renews a running step's lease, and the
checker that re-drives steps whose lease lapsed.

The heartbeat is a daemon thread with its own Redis calls: the engine loop never
waits for it, and a slow Redis delays a renewal, never a result. The checker runs
every `lease_check_interval_s` (a beat entry). From a `kill -9` to the step being
sent again takes at most `lease_ttl_s + lease_check_interval_s`; it resumes from
its checkpoint as soon as a worker of its queue is free.

A re-driven step is the same message (same task id, same chord), so a shard
counts once in its chord however many runs report it; and a late run of the old
holder (a zombie that wakes up) cannot double anything, because only the first
shard summary written is the shard's (`ShardSummary.save_if_absent`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis.exceptions

from batchsvc.errors import ServiceError
from batchsvc.pipeline.watchdog import StuckWatch, end_this_process, kill_frozen, process_start_ticks
from batchsvc.services import Services
from batchsvc.store.leases import Lease

log = logging.getLogger(__name__)


def subject_of(step: str, job_id: str, *rest: object) -> str:
    """What a lease is for: a pipeline step of a job ("batch.shard:<job>:3")."""
    return ":".join([step, job_id, *map(str, rest)])


def job_of(subject: str) -> str:
    return subject.split(":")[1]


class Heartbeat:
    """Holds a step's lease while it runs. `progress()` tells the hung-engine
    watchdog a result arrived; `lost` says another run took the lease over."""

    def __init__(self, svc: Services, subject: str, worker: str, message: str):
        settings = svc.settings
        self.store = svc.leases
        self.ttl_s = float(settings.lease_ttl_s)
        self.renew_s = float(settings.lease_renew_s)
        now = time.time()
        pid = os.getpid()
        self.lease = Lease(
            subject=subject,
            run=uuid.uuid4().hex[:12],
            worker=worker,
            host=socket.gethostname(),
            pid=pid,
            pid_start=process_start_ticks(pid),
            message=message,
            acquired_at=now,
            renewed_at=now,
        )
        self.watch = StuckWatch(settings.stuck_after_s)
        self.lost = False
        self._held = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {subject}", daemon=True)

    def __enter__(self) -> Heartbeat:
        try:
            self._acquire()
        except redis.exceptions.RedisError as err:
            # Redis is down: nothing moves without it anyway. The step runs and
            # fails on Redis, or the heartbeat takes the lease once Redis is back.
            log.warning("could not take the lease of %s yet: %s", self.lease.subject, err)
        self._thread.start()
        return self

    def _acquire(self) -> None:
        self.store.acquire(self.lease, self.ttl_s)
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self.end()

    def end(self, wait_s: float | None = None) -> None:
        """Stop renewing and release the lease; or, when the step will run again
        after `wait_s` (a retry with a countdown, which a worker holds in memory
        until then), keep the lease until that time plus its ttl, so that a worker
        dying in the wait costs no more than a run dying."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.renew_s + 5)
        try:
            if not wait_s or wait_s <= 0:
                self.store.release(self.lease.subject, self.lease.run)
            else:
                self.store.renew(self.lease.subject, self.lease.run, wait_s + self.ttl_s)
        except redis.exceptions.RedisError as err:
            log.warning("could not release the lease of %s (%s); it lapses by itself", self.lease.subject, err)

    def progress(self) -> None:
        self.watch.progress()

    def lapse(self) -> None:
        """This process is about to end (its memory budget): stop renewing the lease
        and let it lapse now, so the checker sends the step again at its next round
        instead of lease_ttl_s from now."""
        self.lost = True  # the beat thread renews no more
        self.store.renew(self.lease.subject, self.lease.run, 0)

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_s):
            stuck = self.watch.stuck_for()
            if stuck is not None:
                # Stop renewing first: even if the kill below were to fail, the
                # lease lapses and the checker re-drives the step.
                end_this_process(f"{self.lease.subject} has had no result from the engine for {stuck:.0f}s")
                return
            if self.lost:
                continue
            try:
                if not self._held:
                    self._acquire()
                elif not self.store.renew(self.lease.subject, self.lease.run, self.ttl_s):
                    self.lost = True
                    log.warning("lease of %s was taken over (this run was presumed dead)", self.lease.subject)
            except redis.exceptions.RedisError as err:
                log.warning("lease renewal of %s failed: %s", self.lease.subject, err)


def redrive_expired(svc: Services, send: Callable[[Lease], None], now: float | None = None) -> list[Lease]:
    """Send again every step whose lease lapsed (its worker died or froze), unless
    its job ended meanwhile. A frozen worker on this host is killed as well."""
    redriven = []
    for lease in svc.leases.claim_expired(time.time() if now is None else now):
        kill_frozen(lease.host, lease.pid, lease.pid_start)
        try:
            job = svc.jobs.get(job_of(lease.subject))
        except ServiceError:
            continue
        if job.status.terminal:
            continue
        late = time.time() - lease.renewed_at
        log.warning("lease of %s (worker %s, run %s) lapsed %.0fs ago; sending it again",
                    lease.subject, lease.worker, lease.run, late)  # fmt: skip
        send(lease)
        redriven.append(lease)
    return redriven
