"""The one base class of batchsvc's Celery tasks (`task_cls` of the app built in
tasks/celery_app.py): what every task shares, so that a task's decorator says
only what differs (its name, its retry cap, `fails_job`, a time limit).

Shared:
- delivery: acknowledged late and given back when the worker dies (app-wide,
  `task_acks_late` and `task_reject_on_worker_lost`);
- retries on outages that pass, and nothing broader (`TRANSIENT`): storage
  unavailable, Redis connection or timeout errors, with exponential backoff
  (factor 2, at most 300 s, full jitter), up to the task's `max_retries`
  (3 unless the task says otherwise);
- `fails_job` (off unless a task opts in): the step's final failure, its retries
  spent or an error nobody retries, ends its job as failed instead of leaving it
  active forever. Prepare and finalize opt in; a shard does not (its failures
  are answered per request), nor does the webhook (a receiver never fails a job).
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from batchsvc.pipeline.finalize import fail_job
from batchsvc.services import current_services
from batchsvc.storage.base import StorageUnavailable
from batchsvc.store.jobs import job_error

# Outages that pass: retry these, and nothing broader.
TRANSIENT = (StorageUnavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
BACKOFF_FACTOR = 2
BACKOFF_MAX_S = 300


class BatchTask(Task):
    autoretry_for = TRANSIENT
    retry_backoff = BACKOFF_FACTOR
    retry_backoff_max = BACKOFF_MAX_S
    retry_jitter = True
    max_retries = 3
    fails_job = False

    def retry_outage(self, exc: Exception) -> Exception:
        """The retry autoretry would make for an outage (the same backoff), for a
        step that retries inside its lease, so the lease covers the countdown."""
        countdown = get_exponential_backoff_interval(
            factor=BACKOFF_FACTOR, retries=self.request.retries, maximum=BACKOFF_MAX_S, full_jitter=True
        )
        return self.retry(exc=exc, countdown=countdown)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not self.fails_job:
            return
        job_id = kwargs.get("job_id", args[-1] if args else None)
        if job_id:
            fail_job(
                current_services(), job_id, job_error("internal_error", f"{self.name} failed: {type(exc).__name__}")
            )
