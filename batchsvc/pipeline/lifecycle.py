"""Cancel and expiry: the two ways a job ends before all its requests ran.

Neither interrupts a worker. A cancel moves the job to `cancelling`; a job's
`expires_at` passes. Running shards notice at their next checkpoint, shards not
yet started notice before they start, and both answer their unanswered requests
with error lines (`batch_cancelled`, `batch_expired`). The chord then finishes as
usual, and finalize ends the job `cancelled` or `expired` with every finished
result kept.

A job cancelled before it was sharded (queued, validating) is still validated:
that is how its requests become known, so that each one is in the errors file as
`batch_cancelled` (prepare answers them all on the cpu worker, no LLM worker
involved). Its input failing validation ends it failed, with the line errors."""

from __future__ import annotations

import time
from dataclasses import dataclass

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.services import Services
from batchsvc.store.jobs import Job, JobStatus

CANCELLED_CODE = "batch_cancelled"
EXPIRED_CODE = "batch_expired"
FAILED_CODE = "batch_failed"


@dataclass(frozen=True)
class StopReason:
    code: str
    message: str


def stop_reason(job: Job, now: float | None = None) -> StopReason | None:
    """Why the unanswered requests of this job must not run, if they must not."""
    now = time.time() if now is None else now
    if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        return StopReason(CANCELLED_CODE, "the batch was cancelled before this request ran")
    if job.expires_at is not None and now >= job.expires_at:
        return StopReason(EXPIRED_CODE, "the batch's completion window ended before this request ran")
    if job.status is JobStatus.FAILED:
        return StopReason(FAILED_CODE, "the batch failed before this request ran")
    return None


def cancel_job(svc: Services, job_id: str) -> Job:
    """Cancel a job: it goes through `cancelling` until every request of it is
    answered (see the module's docstring). Cancelling twice is harmless."""
    now = time.time()
    jobs = svc.jobs
    cancellable = frozenset({JobStatus.QUEUED, JobStatus.VALIDATING, JobStatus.IN_PROGRESS})
    if jobs.transition(job_id, JobStatus.CANCELLING, expect=cancellable, cancelling_at=now):
        return jobs.get(job_id)
    job = jobs.get(job_id)
    if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        return job
    raise ServiceError(
        ErrorType.CONFLICT,
        f"cannot cancel a batch that is {job.status.value}",
        {"job_id": job_id, "status": job.status.value},
    )


def final_status(was: JobStatus, expired_requests: int) -> JobStatus:
    if was is JobStatus.CANCELLING:
        return JobStatus.CANCELLED
    if expired_requests:
        return JobStatus.EXPIRED
    return JobStatus.COMPLETED
