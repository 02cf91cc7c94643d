"""The retry of a finished job's failed requests: one new job of the same model
holding only those requests (metadata.retry_of names the original). However many
callers ask, and however often, there is one such job at a time: until it ends,
every ask answers with it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchsvc.errors import ErrorType, JobNotFound, ServiceError
from batchsvc.pipeline.recovery import failed_requests_file
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.store.jobs import Job, new_job_id


@dataclass(frozen=True)
class Retry:
    job_id: str
    status: str
    requests: int | None
    created: bool  # False: an earlier ask made it, and it has not ended


def retry_failed_requests(
    svc: Services, job: Job, enqueue_for: Callable[[dict[str, Any]], Callable[[str], None]]
) -> Retry:
    """The job retrying `job`'s failed requests, created now unless one exists
    that has not ended. `enqueue_for(metadata)` gives the enqueue function of submit_job."""
    candidate = new_job_id()
    retry_id, mine = svc.jobs.claim_retry(job.id, candidate)
    if not mine:
        try:
            existing = svc.jobs.get(retry_id)
        except JobNotFound:  # another ask is creating it this very moment
            return Retry(retry_id, "queued", None, created=False)
        return Retry(retry_id, existing.status.value, existing.total or existing.submitted_lines, created=False)
    try:
        with tempfile.TemporaryFile() as retry_input:
            count = failed_requests_file(svc, job, retry_input)
            if count == 0:
                raise ServiceError(ErrorType.CONFLICT, "no request of this job failed", {"job_id": job.id})
            retry_input.seek(0)
            metadata = {**job.metadata, "retry_of": job.id}
            new = submit_job(
                svc,
                tenant=job.tenant,
                model=job.model,
                upload=retry_input,
                webhook_url=job.webhook_url,
                metadata=metadata,
                endpoint=job.endpoint,
                enqueue=enqueue_for(metadata),
                job_id=candidate,
            )
    except BaseException:
        svc.jobs.release_retry(job.id, candidate)
        raise
    svc.jobs.confirm_retry(job.id)
    return Retry(new.id, new.status.value, count, created=True)
