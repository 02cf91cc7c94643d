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
from typing import BinaryIO

import orjson

from batchsvc.errors import ErrorType, JobNotFound, ServiceError
from batchsvc.inference.validation import input_line
from batchsvc.pipeline.prepare import unprepared
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound
from batchsvc.storage.manifest import Manifest, ShardSummary
from batchsvc.store.jobs import Counts, Job, JobStatus


@dataclass(frozen=True)
class Redrive:
    job_id: str
    step: str  # "prepare", "shards", "finalize" or "none"
    shards: list[int] = field(default_factory=list)


def plan_redrive(svc: Services, job: Job) -> Redrive:
    """What a job needs sent again to make progress."""
    if unprepared(job):
        return Redrive(job.id, "prepare")
    if job.status is JobStatus.FINALIZING:
        return Redrive(job.id, "finalize")
    if job.status in (JobStatus.IN_PROGRESS, JobStatus.CANCELLING):
        try:
            manifest = Manifest.load(svc.storage, job)
        except ObjectNotFound:
            return Redrive(job.id, "prepare")
        missing = [s.index for s in manifest.shards if not svc.storage.exists(layout.shard_summary_key(job, s.index))]
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


def claim_redrive(svc: Services, job_id: str) -> bool:
    """Whether this caller may re-drive the job now: one of any number of
    concurrent retries (and the sweeper) is, and the work it sends gets a stall
    period (stall_after_s) to show progress before it can be sent again."""
    return svc.jobs.claim_redrive(job_id, svc.settings.stall_after_s)


def redrive(svc: Services, job_id: str, send: Callable[[Redrive], None], *, claimed: bool = False) -> Redrive:
    """Send again what a job is missing (the operator's retry, and the sweeper's),
    unless another re-drive of it holds the claim (`claimed`: the caller holds it)."""
    job = svc.jobs.get(job_id)
    if job.status.terminal:
        raise ServiceError(ErrorType.CONFLICT, f"job is {job.status.value}; nothing to retry", {"job_id": job_id})
    plan = plan_redrive(svc, job)
    if plan.step != "none" and (claimed or claim_redrive(svc, job_id)):
        svc.jobs.update(job_id, last_progress_at=time.time())  # the next sweep waits a full period again
        send(plan)
    return plan


def save_job_record(svc: Services, job_id: str) -> None:
    """Copy the job record to storage (at submit and when the job ends)."""
    job = svc.jobs.get(job_id)
    svc.storage.put_bytes(layout.job_record_key(job), job.to_json(), "application/json")


def rebuild_job(svc: Services, job_id: str, tenant: str) -> Job:
    """Recreate a job Redis lost, from its record copy, manifest and shard
    summaries in storage. An active job comes back in_progress with the counts
    of its finished shards, ready to be re-driven."""
    try:
        job = Job.from_json(svc.storage.get_bytes(layout.job_record_key(layout.JobKey(tenant, job_id))))
    except ObjectNotFound:
        raise JobNotFound(job_id) from None
    if not job.status.terminal:
        try:
            manifest = Manifest.load(svc.storage, job)
        except ObjectNotFound:
            job.status = JobStatus.QUEUED  # never sharded: prepare runs again
        else:
            job.status = JobStatus.IN_PROGRESS if job.status is not JobStatus.CANCELLING else job.status
            job.total, job.shard_count = manifest.total, len(manifest.shards)
            for shard in manifest.shards:
                try:
                    summary = ShardSummary.load(svc.storage, job, shard.index)
                except ObjectNotFound:
                    continue
                counts = Counts(summary.succeeded, summary.failed, summary.prompt_tokens, summary.completion_tokens)
                svc.jobs.record_shard_progress(job_id, shard.index, counts)
    svc.jobs.create(job)
    return job


def failed_requests_file(svc: Services, job: Job, out: BinaryIO) -> int:
    """Write the input lines of a finished job's failed requests to `out`, as
    they were submitted; returns how many. Streams both files."""
    if not job.status.terminal or not job.errors_key or not job.input_key:
        raise ServiceError(ErrorType.CONFLICT, f"job is {job.status.value}; it has no failed requests to retry")
    with svc.storage.open(job.errors_key) as errors:
        failed = {orjson.loads(raw)["custom_id"] for raw in errors if raw.strip()}
    written = 0
    with svc.storage.open(job.input_key) as source:
        for number, chunk in enumerate(source, 1):
            raw = input_line(chunk, first=number == 1)
            if raw.strip() and orjson.loads(raw).get("custom_id") in failed:
                out.write(raw + b"\n")
                written += 1
    return written
