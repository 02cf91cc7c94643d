"""Re-drive jobs whose messages were lost: a Redis restart without persistence, a
chord whose counter vanished, a prepare that died with its worker.

The storage manifest and the per-shard summaries say what is missing, so only
the missing part is sent again: prepare for a job never sharded, the shards
without a summary, or finalize when every shard is done. Every step is safe to
run twice, so a re-drive that races a slow original costs time, never results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batchsvc import layout
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.jobs import Job, JobStatus
from batchsvc.manifest import Manifest
from batchsvc.services import Services
from batchsvc.storage import ObjectNotFound


@dataclass(frozen=True)
class Redrive:
    job_id: str
    step: str  # "prepare", "shards", "finalize" or "none"
    shards: list[int] = field(default_factory=list)


def plan_redrive(svc: Services, job: Job) -> Redrive:
    """What a job needs sent again to make progress."""
    if job.status in (JobStatus.QUEUED, JobStatus.VALIDATING):
        return Redrive(job.id, "prepare")
    if job.status is JobStatus.FINALIZING:
        return Redrive(job.id, "finalize")
    if job.status in (JobStatus.IN_PROGRESS, JobStatus.CANCELLING):
        try:
            manifest = Manifest.load(svc.storage, job.id)
        except ObjectNotFound:
            return Redrive(job.id, "prepare")
        missing = [
            s.index for s in manifest.shards if not svc.storage.exists(layout.shard_summary_key(job.id, s.index))
        ]
        return Redrive(job.id, "shards", missing) if missing else Redrive(job.id, "finalize")
    return Redrive(job.id, "none")


def stalled_jobs(
    svc: Services, *, now: float, stall_after_s: float, queue_depth: Callable[[Job], int]
) -> Iterator[Job]:
    """Active jobs with no activity for `stall_after_s`, whose work is not simply
    waiting in a queue behind other jobs (`queue_depth` of their queue is 0)."""
    for job_id in svc.jobs.active_ids():
        try:
            job = svc.jobs.get(job_id)
        except ServiceError:
            continue
        if job.status.terminal or now - job.last_activity < stall_after_s:
            continue
        if queue_depth(job) > 0:
            continue
        yield job


def redrive(svc: Services, job_id: str, send: Callable[[Redrive], None]) -> Redrive:
    """Send again what a job is missing (the operator's retry, and the sweeper's)."""
    job = svc.jobs.get(job_id)
    if job.status.terminal:
        raise ServiceError(ErrorType.CONFLICT, f"job is {job.status.value}; nothing to retry", {"job_id": job_id})
    plan = plan_redrive(svc, job)
    if plan.step != "none":
        svc.jobs.update(job_id, last_progress_at=time.time())  # the next sweep waits a full period again
        send(plan)
    return plan
