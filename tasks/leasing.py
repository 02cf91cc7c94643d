"""Celery's side of leases: a running step's lease carries its own message, and
a lapsed lease is sent again as that same message (same task id, same chord).

Also the worker's shutdown flag: Celery's warm shutdown (SIGTERM) waits for the
running task to end, which for a shard may be an hour. A shard polls
`shutting_down()` at every result; once set, it writes its checkpoint and goes
back to the queue (tasks/batch.py), and the worker exits.
"""

from __future__ import annotations

import numbers
import threading
from datetime import UTC, datetime

from celery import Celery, Task
from celery.exceptions import Retry
from kombu.utils.json import dumps, loads

from batchsvc.pipeline.leases import Heartbeat, subject_of
from batchsvc.services import current_services
from batchsvc.store.leases import Lease

_shutdown = threading.Event()


def request_shutdown() -> None:
    _shutdown.set()


def shutting_down() -> bool:
    return _shutdown.is_set()


class TaskHeartbeat(Heartbeat):
    """A task's lease, kept over the countdown of a retry raised inside it."""

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.end(_wait_of(exc) if isinstance(exc, Retry) else None)


def _wait_of(retry: Retry) -> float:
    when = retry.when
    if isinstance(when, numbers.Number):
        return float(when)  # type: ignore[arg-type]
    if isinstance(when, datetime):
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return 0.0


def heartbeat(task: Task, job_id: str, *rest: object) -> Heartbeat:
    """A lease for the running task (`with heartbeat(self, job_id, index) as beat:`)."""
    message = dumps(task.signature_from_request(task.request))
    return TaskHeartbeat(current_services(), subject_of(task.name, job_id, *rest), task.request.hostname or "", message)


def resend(app: Celery, lease: Lease) -> None:
    """Send a step whose lease lapsed again, exactly as it was first sent."""
    app.signature(loads(lease.message)).apply_async()
